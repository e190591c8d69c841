"""Hostile and careless runs of `upzeroir restore`, `eval.run` and `eval.score`: no file a run
writes ever replaces an input, odd names and odd files fail alone or are skipped and named,
resume trusts only finished outputs of the same input, and every problem a user can cause ends
in one line and exit code 2 before any model is loaded."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import zlib

import jax
import numpy as np
import pytest
import tiny_runs

from eval import run as run_lib
from eval import score
from upzeroir_jax import cli, io, jobs, pipeline, records
from upzeroir_jax.errors import RunError

TINY = tiny_runs.CLI_FLAGS


def _png(path, value=0.5, shape=(12, 16)):
  io.write_image(path, np.full(shape + (3,), value))


def _restore(capsys, *args):
  """(exit code, stdout, stderr lines) of `upzeroir restore ARGS` in this process."""
  code = cli.main(["upzeroir", "restore", *map(str, args)])
  std = capsys.readouterr()
  return code, std.out, std.err.strip().splitlines()


def _one_line(capsys, *args) -> str:
  """The one error line of a run that must end with exit code 2."""
  code, _, err = _restore(capsys, *args)
  assert code == 2 and len(err) == 1 and err[0].startswith("upzeroir: error: "), (code, err)
  return err[0]


def _snapshot(folder: pathlib.Path) -> dict:
  return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---- every file a run writes is checked against every input -----------------------------------

def test_a_sidecar_never_replaces_an_input_named_like_it(tmp_path, capsys, no_models):
  folder = tmp_path / "J"
  _png(tmp_path / "a.png")
  folder.mkdir()
  shutil.copy(tmp_path / "a.png", folder / "pic.json")  # an image whose name ends in .json
  before = _snapshot(tmp_path)
  line = _one_line(capsys, f"--input={folder / 'pic.json'}", f"--output={folder / 'pic.png'}",
                   *TINY)
  assert f"{folder / 'pic.json'}, written by this run, is the input" in line
  assert _snapshot(tmp_path) == before


def test_the_report_page_never_replaces_an_input(tmp_path, capsys, no_models):
  _png(tmp_path / "a.png")
  (tmp_path / "a.png").rename(tmp_path / "report.html")  # an image named like the page
  line = _one_line(capsys, f"--input={tmp_path / 'report.html'}",
                   f"--output={tmp_path / 'b.png'}", "--report", *TINY)
  assert f"{tmp_path / 'report.html'}, written by this run, is the input" in line


def test_eval_run_record_never_replaces_an_input(tmp_path):
  data, out = tmp_path / "data", tmp_path / "run"
  _png(out / "a.png")
  (out / "a.png").rename(out / "run.json")
  data.mkdir()
  (data / "a.png").symlink_to(out / "run.json")  # the input is the run's record file
  todo = [jobs.Job(name="a.png", source=data / "a.png", output=out / "restored" / "a.png")]
  jobs.check_outputs(todo)
  with pytest.raises(RunError, match=f"^{out / 'run.json'}, written by this run, is the input"):
    jobs.check_outputs(todo, written=[out / run_lib.RUN_FILE])


def test_an_input_named_like_a_temporary_file_in_the_output_folder_is_refused(
    tmp_path, capsys, no_models):
  _png(tmp_path / "a.png")
  (tmp_path / "a.png").rename(tmp_path / ".tmpabcdefgh.part")
  line = _one_line(capsys, f"--input={tmp_path / '.tmpabcdefgh.part'}",
                   f"--output={tmp_path / 'b.png'}", *TINY)
  assert f"the input {tmp_path / '.tmpabcdefgh.part'} is named like a temporary file" in line
  assert sorted(p.name for p in tmp_path.iterdir()) == [".tmpabcdefgh.part"]


def test_eval_score_replaces_a_planted_symlink_instead_of_following_it(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("keep me")
  out = tmp_path / "scores"
  out.mkdir()
  (out / "scores.csv").symlink_to(victim)
  rows = [{"name": "a", **{m: 0.5 for m in score.METRICS}, "restored": "r/a.png", "gt": ""}]
  score.write(rows, {"count": 1}, out, {})
  assert victim.read_text() == "keep me" and not (out / "scores.csv").is_symlink()
  assert (out / "scores.csv").read_text().splitlines()[0] == ",".join(
      ["name", *score.METRICS, "restored", "gt"])


# ---- names --------------------------------------------------------------------------------------

def test_image_key_of_a_non_utf8_name_is_the_crc_of_its_bytes():
  raw = b"caf\xe9.png"
  want = jax.random.fold_in(jax.random.PRNGKey(7), zlib.crc32(raw) & 0x7FFFFFFF)
  np.testing.assert_array_equal(pipeline.image_key(7, os.fsdecode(raw)), np.asarray(want))
  np.testing.assert_array_equal(  # UTF-8 names keep their keys
      pipeline.image_key(7, "café.png"),
      jax.random.fold_in(jax.random.PRNGKey(7), zlib.crc32("café.png".encode()) & 0x7FFFFFFF))


def test_a_non_utf8_name_fails_alone_and_is_named_with_its_bytes_escaped(
    tmp_path, capsys, no_models):
  src = tmp_path / "in"
  src.mkdir()
  bad = pathlib.Path(os.fsdecode(bytes(src) + b"/caf\xe9.png"))
  bad.write_bytes(b"not an image")
  (src / "text.png").write_text("not an image either")
  code, out, err = _restore(capsys, f"--input={src}", f"--output={tmp_path / 'out'}", *TINY)
  assert code == 2 and "failed 2" in out
  assert err[0] == "upzeroir: error: 2 images could not be restored:"
  assert sorted(line.split(": ")[0].strip() for line in err[1:]) == [
      f"{src}/caf\\xe9.png", f"{src}/text.png"]


def test_derived_names_fit_the_filesystem_limit_and_can_be_written(tmp_path):
  longest = os.pathconf(tmp_path, "PC_NAME_MAX")
  src = tmp_path / "in"
  src.mkdir()
  # 255 bytes each; stems shared, so the outputs are named "<stem>_jpg.png", 259 bytes
  names = [stem + suffix for stem in ("p" * 251, "a" + "é" * 125) for suffix in (".jpg", ".png")]
  for name in names:
    (src / name).write_bytes(b"")
  got = cli.jobs_for(str(src), str(tmp_path / "out"))
  written = [job.output for job in got] + [jobs.sidecar_path(job.output) for job in got]
  assert len({p.name for p in written}) == 8
  for path in written:
    assert len(os.fsencode(path.name)) <= longest, path.name
    path.name.encode("utf-8")  # never cut inside a character
  for job in got:
    io.write_image(job.output, np.zeros((2, 2, 3)))
    io.write_json(jobs.sidecar_path(job.output), {"name": job.name})
    assert json.loads(jobs.sidecar_path(job.output).read_text()) == {"name": job.name}


def test_fit_name_cuts_the_stem_and_adds_a_hash_of_the_whole_name():
  assert jobs.NAME_MAX == 255 and jobs.fit_name("x" * 250 + ".json") == "x" * 250 + ".json"
  short = jobs.fit_name("x" * 300 + ".json")
  assert short.startswith("x" * 100) and short.endswith(".json") and len(short) == 255
  assert jobs.fit_name("y" * 300 + ".json") != jobs.fit_name("y" * 299 + "z.json")


def test_an_output_name_over_the_limit_fails_alone(tmp_path, capsys, no_models):
  _png(tmp_path / "a.png")
  long = tmp_path / "out" / ("q" * 256 + ".png")
  line = _one_line(capsys, f"--input={tmp_path / 'a.png'}", f"--output={long}", *TINY)
  assert line == f"upzeroir: error: {long}: file name too long (over 255 bytes)"
  assert not (tmp_path / "out").exists()


# ---- what was finished, and from which input ---------------------------------------------------

def _finished(tmp_path, settings: dict) -> jobs.Job:
  """A job with an output image and a sidecar written as `pipeline.run` writes them."""
  job = jobs.Job(name="a.png", source=tmp_path / "a.png", output=tmp_path / "out" / "a.png")
  _png(job.source, 0.25)
  _png(job.output, 0.75)
  io.write_json(jobs.sidecar_path(job.output),
                {"settings": settings, "files": records.files_record(job)})
  return job


def test_resume_refuses_an_output_whose_input_was_replaced(tmp_path):
  key = {"seed": 0}
  job = _finished(tmp_path, key)
  records.check_resume([job], key, overwrite=False)
  assert records.finished(job.output)
  os.utime(job.source, ns=(1, 1))  # touched: same content, another time
  records.check_resume([job], key, overwrite=False)
  _png(job.source, 0.5)  # another image of the same size
  with pytest.raises(RunError, match="another version of its input .same size, other content"):
    records.check_resume([job], key, overwrite=False)
  _png(job.source, 0.5, shape=(13, 16))
  with pytest.raises(RunError, match=r"another version of its input \(size: \d+ there, \d+ now"):
    records.check_resume([job], key, overwrite=False)
  records.check_resume([job], key, overwrite=True)


def test_an_image_its_sidecar_does_not_name_is_not_finished(tmp_path):
  job = _finished(tmp_path, {"seed": 0})
  assert records.finished(job.output)
  _png(job.output, 0.8)  # a newer image whose sidecar write failed
  assert not records.finished(job.output)
  jobs.sidecar_path(job.output).write_text(json.dumps({"settings": {"seed": 0}}))  # no record
  assert not records.finished(job.output)


def test_the_ldrps_final_resize_keeps_a_finished_pair_finished(tmp_path):
  from eval import protocol
  job = _finished(tmp_path, {"seed": 0})
  stale = _finished(tmp_path / "stale", {"seed": 0})
  _png(stale.output, 0.1)  # its sidecar names another image
  assert protocol.finish_outputs([job.output, stale.output]) == 2
  assert io.image_size(job.output) == (protocol.LDRPS_OUTPUT_SIZE,) * 2
  assert records.finished(job.output) and not records.finished(stale.output)
  assert records.read_sidecar(job.output)["settings"] == {"seed": 0}


def test_a_deeply_nested_sidecar_is_refused_in_one_line(tmp_path):
  job = _finished(tmp_path, {"seed": 0})
  jobs.sidecar_path(job.output).write_text("[" * 200_000 + "]" * 200_000)
  with pytest.raises(RunError, match="was restored with other settings .it has no settings"):
    records.check_resume([job], {"seed": 0}, overwrite=False)
  assert not records.finished(job.output)


# ---- odd files and folders -----------------------------------------------------------------------

def _main_in_thread(fn, fifo):
  """fn()'s result in a thread, failing the test if it waited on `fifo` (then released)."""
  outcome = []
  thread = threading.Thread(target=lambda: outcome.append(fn()), daemon=True)
  thread.start()
  thread.join(20)
  if thread.is_alive():
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    thread.join(20)
    pytest.fail(f"the run waited on the FIFO {fifo}")
  return outcome[0]


def test_a_fifo_input_is_refused_at_once(tmp_path, capsys, no_models):
  fifo = tmp_path / "pipe.png"
  os.mkfifo(fifo)
  code = _main_in_thread(lambda: cli.main(["upzeroir", "restore", f"--input={fifo}",
                                           f"--output={tmp_path / 'out'}", *TINY]), fifo)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and err == [
      f"upzeroir: error: --input={fifo}: is a FIFO (named pipe), not a regular file"]


def test_fifos_and_dangling_links_in_a_folder_are_skipped_and_named(tmp_path, capsys, no_models):
  src = tmp_path / "in"
  src.mkdir()
  os.mkfifo(src / "pipe.png")
  (src / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
  (src / "text.png").write_text("not an image")
  code = _main_in_thread(lambda: cli.main(["upzeroir", "restore", f"--input={src}",
                                           f"--output={tmp_path / 'out'}", *TINY]),
                         src / "pipe.png")
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert err[:2] == [
      f"upzeroir: {src / 'gone.jpg'}: is a dangling link, not a regular file; skipped",
      f"upzeroir: {src / 'pipe.png'}: is a FIFO (named pipe), not a regular file; skipped"]
  assert err[2].startswith(f"upzeroir: error: {src / 'text.png'}: ")


def test_an_output_folder_that_is_a_file_or_a_dangling_link(tmp_path, capsys, no_models):
  _png(tmp_path / "a.png")
  (tmp_path / "file").write_text("a file")
  (tmp_path / "link").symlink_to(tmp_path / "nowhere")
  for out in (tmp_path / "file", tmp_path / "link"):
    line = _one_line(capsys, f"--input={tmp_path / 'a.png'}", f"--output={out}", *TINY)
    assert line == (f"upzeroir: error: the output folder {out} is a file or a dangling link, "
                    "not a folder; choose another output")
  assert (tmp_path / "file").read_text() == "a file" and not (tmp_path / "nowhere").exists()


_AS_NOBODY = """
import os, pathlib, sys
from upzeroir_jax import jobs
from upzeroir_jax.errors import RunError
os.setgid(65534)
os.setuid(65534)
for what, fn in (("lock", lambda: jobs.output_lock(pathlib.Path(sys.argv[1])).__enter__()),
                 ("list", lambda: jobs.list_images(pathlib.Path(sys.argv[2]), "--input=x"))):
  try:
    fn()
    print(what, "ok")
  except RunError as e:
    print(what, "RunError", e)
  except Exception as e:
    print(what, "other", type(e).__name__, e)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to the user nobody, which needs root")
def test_read_only_output_and_unreadable_input_folders_are_one_line(tmp_path):
  root = pathlib.Path(tempfile.mkdtemp(prefix="upzeroir-perm-"))  # outside pytest's 0700 root
  try:
    root.chmod(0o755)
    (root / "ro").mkdir(mode=0o555)
    (root / "hidden").mkdir(mode=0o000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", _AS_NOBODY, str(root / "ro"),
                          str(root / "hidden")], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
  finally:
    (root / "hidden").chmod(0o755)
    shutil.rmtree(root)
  assert run.stdout.splitlines() == [
      (f"lock RunError the output folder {root / 'ro'} cannot be written (Permission denied); "
       "choose another output"),
      "list RunError --input=x: cannot list this folder (Permission denied)"], run.stderr


def test_a_killed_runs_temporaries_are_removed_when_the_folder_is_locked(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  left = [out / ".tmpab_c1234.part", out / ".tmpzzzzzzzz.part"]
  kept = [out / ".tmpshort.part", out / "a.tmpabcdefgh.part", out / "mine.png"]
  for path in left + kept:
    path.write_bytes(b"x")
  with jobs.output_lock(out):
    assert sorted(p for p in out.iterdir() if p.name != jobs.LOCK_NAME) == sorted(kept)


def test_a_failed_run_leaves_no_output_folder_behind(tmp_path, capsys, no_models):
  (tmp_path / "text.png").write_text("not an image")
  out = tmp_path / "new" / "out"
  _one_line(capsys, f"--input={tmp_path / 'text.png'}", f"--output={out}/", *TINY)
  assert not (tmp_path / "new").exists()
  (tmp_path / "kept").mkdir()
  with jobs.output_lock(tmp_path / "kept"):
    pass
  assert (tmp_path / "kept").is_dir()  # a folder that was there stays


# ---- flags and files checked before any model is loaded ----------------------------------------

@pytest.mark.parametrize("flag,needle", [
    ("--seed=18446744073709551616", "flag --seed=18446744073709551616"),
    ("--seed=-9223372036854775809", "flag --seed=-9223372036854775809"),
    ("--size=100", "--size=100 must be a positive multiple of 64"),
], ids=["seed_too_large", "seed_too_small", "size_off_grid"])
def test_bad_seed_or_size_is_refused_before_loading(tmp_path, capsys, no_models, flag, needle):
  _png(tmp_path / "a.png")
  line = _one_line(capsys, f"--input={tmp_path / 'a.png'}", f"--output={tmp_path / 'out'}",
                   *TINY, flag)
  assert needle in line


def test_a_prompt_file_that_is_not_utf8_is_named(tmp_path, capsys, no_models):
  _png(tmp_path / "in" / "a.png")
  (tmp_path / "prompts").mkdir()
  (tmp_path / "prompts" / "a.txt").write_bytes(b"caf\xe9 au lait")
  line = _one_line(capsys, f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}",
                   f"--prompt_dir={tmp_path / 'prompts'}", *TINY)
  assert line == (f"upzeroir: error: {tmp_path / 'prompts' / 'a.txt'}: the prompt file is not "
                  "UTF-8 text; save it as UTF-8")


def test_a_write_failure_names_its_file_once(tmp_path):
  target = tmp_path / "out.png"
  target.mkdir()
  with pytest.raises(io.WriteError) as err:
    io.write_image(target, np.zeros((2, 2, 3)))
  message = pipeline.failure(target, err.value)
  assert message.startswith(f"{target}: cannot write") and message.count(str(target)) == 1

