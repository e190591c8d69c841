"""Batch runs keep inputs safe: no output replaces an input, names never collide, one bad
image never stops the others, one run at a time writes an output folder, and resume trusts
only image and sidecar pairs that belong together and to the same input."""

import json
import os
import pathlib
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tiny_runs
from absl import flags
from PIL import Image

from eval import run as run_lib
from upzeroir_jax import cli, io, jobs, pipeline, records
from upzeroir_jax import flags as flags_lib
from upzeroir_jax.errors import RunError

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = tiny_runs.CLI_FLAGS


def _png(path, value=0.5, shape=(12, 16)):
  io.write_image(path, np.full(shape + (3,), value))


def _jpg(path, value=0.5):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((12, 16, 3), int(255 * value), np.uint8)).save(path, format="JPEG")


def _nan_tiff(path):
  """A float TIFF holding one NaN pixel (a file `read_image` cannot turn into an image)."""
  x = np.full((12, 16), 0.5, np.float32)
  x[3, 4] = np.nan
  Image.fromarray(x, "F").save(path)


def _tiny_flags():
  fv = flags_lib.define_model_flags(flags.FlagValues())
  fv(["prog", *(a for a in TINY if not a.startswith("--task"))])
  return fv


def _names(files):
  return dict(zip(files, jobs.output_names([pathlib.Path(f) for f in files])))


def test_output_names_are_distinct_ignoring_case_and_depend_only_on_the_names():
  assert _names(["a.png", "a.jpg", "c.tif"]) == {
      "a.png": "a_png.png", "a.jpg": "a_jpg.png", "c.tif": "c.png"}
  # Same stem and suffix up to case: numbered in the order of the names ("J" < "j").
  assert _names(["b.jpg", "b.JPG", "b.Jpg"]) == {
      "b.JPG": "b_jpg.png", "b.Jpg": "b_jpg_2.png", "b.jpg": "b_jpg_3.png"}
  # A file whose own stem is a collision name keeps it; the colliding one moves on.
  assert _names(["a.png", "a.jpg", "a_jpg.png", "A.bmp"]) == {
      "a_jpg.png": "a_jpg.png", "A.bmp": "A_bmp.png", "a.jpg": "a_jpg_2.png",
      "a.png": "a_png.png"}
  files = ["x.png", "X.jpg", "x.JPEG", "y.png", "Y.PNG", "y_png.png", "z.webp"]
  want = _names(files)
  assert len({n.casefold() for n in want.values()}) == len(files)
  for seed in range(5):
    shuffled = random.Random(seed).sample(files, len(files))
    assert _names(shuffled) == want


def _cases(d: pathlib.Path):
  """(argv tail, needle) of runs whose outputs would replace or sit among the inputs."""
  _png(d / "in" / "photo.png")
  _jpg(d / "in" / "a.jpg")
  _png(d / "in" / "a.png", 0.25)
  _png(d / "src" / "x.png", 0.75)
  (d / "out").mkdir()
  os.link(d / "src" / "x.png", d / "out" / "x.png")  # a hard link: another name, same file
  (d / "lnk").symlink_to(d / "in")
  return [
      ([f"--input={d / 'in' / 'photo.png'}", f"--output={d / 'in'}/"],
       f"is the input {d / 'in' / 'photo.png'}"),
      ([f"--input={d / 'in' / 'a.jpg'}", f"--output={d / 'in'}"], "holds the inputs"),
      ([f"--input={d / 'in' / 'a.jpg'}", f"--output={d / 'lnk'}"], "holds the inputs"),
      ([f"--input={d / 'src'}", f"--output={d / 'out'}"], f"is the input {d / 'src' / 'x.png'}"),
      ([f"--input={d / 'src' / 'x.png'}", f"--output={d / 'out' / 'x.png'}"],
       f"is the input {d / 'src' / 'x.png'}"),
  ]


def test_cli_never_writes_over_an_input(tmp_path, capsys, no_models):
  cases = _cases(tmp_path)
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  for tail, needle in cases:
    code = cli.main(["upzeroir", "restore", *tail, "--task=lowlight", "--model=tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], (tail, err)
  assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_explicit_output_file_beside_its_input_is_allowed(tmp_path):
  _jpg(tmp_path / "a.jpg")
  _png(tmp_path / "a.png")
  (job,) = cli.jobs_for(str(tmp_path / "a.jpg"), str(tmp_path / "a_restored.png"))
  assert job.output == tmp_path / "a_restored.png" and job.source == tmp_path / "a.jpg"


def test_eval_run_never_writes_over_inputs_or_ground_truth(tmp_path, capsys, no_models):
  _png(tmp_path / "run" / "restored" / "1.png")  # the degraded inputs in the output's place
  _png(tmp_path / "gt_run" / "low" / "2.png")
  for dataset, out, gt, needle in (
      (tmp_path / "run" / "restored", tmp_path / "run", None, "is the input"),
      (tmp_path / "gt_run" / "low", tmp_path, tmp_path / "restored", "holds the inputs")):
    if gt is not None:
      _jpg(gt / "2.jpg", 0.9)  # the ground truth of 2.png, where its output would go
    argv = [run_lib.PROG, f"--dataset_dir={dataset}", f"--output_dir={out}", *TINY]
    code = run_lib.main(argv + ([f"--gt_dir={gt}"] if gt else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
  assert np.all(io.read_image(tmp_path / "run" / "restored" / "1.png") == np.float32(128 / 255))
  assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == ["2.jpg"]


@pytest.mark.slow
def test_cli_batch_goes_on_after_bad_images_and_names_them(tmp_path, use_tiny, capsys):
  src, out = tmp_path / "in", tmp_path / "out"
  for name in ("b.JPG", "b.Jpg", "b.jpg"):
    _jpg(src / name, 0.2)
  _png(src / "a.png", 0.3)
  _jpg(src / "a.jpg", 0.4)
  _nan_tiff(src / "nan.tif")
  _png(src / "w.png")
  (out / "w.png").mkdir(parents=True)  # its output cannot be written
  argv = ["upzeroir", "restore", f"--input={src}", f"--output={out}", *TINY]
  code = cli.main(argv)
  std = capsys.readouterr()
  assert code == 2 and "restored 5, skipped 0" in std.out and "failed 2" in std.out
  err = std.err.strip().splitlines()
  bad = sorted([f"{src / 'nan.tif'}", f"{out / 'w.png'}"])
  assert sorted(line.split(":")[1].split()[-1] for line in err[:2]) == bad  # up front
  assert all(line.startswith("upzeroir: cannot restore ") for line in err[:2])
  assert err[2] == "upzeroir: error: 2 images could not be restored:"
  assert sorted(line.split(":")[0].strip() for line in err[3:]) == bad
  for name, source in (("b_jpg", "b.JPG"), ("b_jpg_2", "b.Jpg"), ("b_jpg_3", "b.jpg"),
                       ("a_png", "a.png"), ("a_jpg", "a.jpg")):
    assert json.loads((out / f"{name}.json").read_text())["input"] == str(src / source)
    assert io.read_image(out / f"{name}.png").shape == (12, 16, 3)
  assert [source for source, _ in use_tiny] == ["tiny"]

  # Resuming: the same settings skip the finished images without loading a model; others
  # are refused in one line before any model is loaded.
  assert cli.main(argv) == 2 and "restored 0, skipped 5" in capsys.readouterr().out
  for extra, diff in (("--seed=1", "seed: 0 there, 1 now"), ("--bits=16", "bits: 8 there, 16 now"),
                      ("--task=dehaze", "config.task: 'lowlight' there, 'dehaze' now")):
    assert cli.main(argv + [extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was restored with other settings" in err[0] and diff in err[0]
    assert "--overwrite" in err[0]
  assert [source for source, _ in use_tiny] == ["tiny"]


@pytest.mark.slow
def test_pipeline_run_goes_on_after_read_and_write_failures(tmp_path, tiny):
  """`pipeline.run` itself (no preflight): a NaN input and an unwritable output fail alone."""
  src, out = tmp_path / "in", tmp_path / "out"
  _png(src / "good.png", 0.3)
  _nan_tiff(src / "nan.tif")
  _png(src / "w.png")
  (out / "w.png").mkdir(parents=True)
  todo = [jobs.Job(name=f.name, source=f, output=out / f"{f.stem}.png")
          for f in (src / "good.png", src / "nan.tif", src / "w.png")]
  config = flags_lib.config_from_flags(_tiny_flags(), "lowlight")
  summary = pipeline.run(todo, tiny, config, pipeline.Settings(size=64, batch=2),
                         progress=False)
  assert summary.done == ["good.png"] and summary.skipped == []
  (nan_name, nan_problem), (w_name, w_problem) = sorted(summary.failed)
  assert nan_name == "nan.tif" and nan_problem.startswith(f"{src / 'nan.tif'}: ")
  assert "NaN" in nan_problem
  assert w_name == "w.png" and w_problem.startswith(f"{out / 'w.png'}: ")
  assert io.read_image(out / "good.png").shape == (12, 16, 3)


@pytest.mark.slow
def test_eval_run_keeps_colliding_names_apart(tmp_path, use_tiny, capsys):
  data, out = tmp_path / "data", tmp_path / "run"
  _png(data / "a.png", 0.3)
  _jpg(data / "a.jpg", 0.4)
  _nan_tiff(data / "c.tif")
  code = run_lib.main([run_lib.PROG, f"--dataset_dir={data}", f"--output_dir={out}", *TINY])
  std = capsys.readouterr()
  assert code == 2 and "restored 2, skipped 0 finished, failed 1" in std.out
  err = std.err.strip().splitlines()
  assert len(err) == 2 and err[0].startswith(f"{run_lib.PROG}: cannot restore {data / 'c.tif'}")
  assert err[1].startswith(f"{run_lib.PROG}: error: {data / 'c.tif'}")
  restored = sorted(p.name for p in (out / "restored").iterdir() if not p.name.startswith("."))
  assert restored == ["a_jpg.json", "a_jpg.png", "a_png.json", "a_png.png"]
  for name, source in (("a_png", "a.png"), ("a_jpg", "a.jpg")):
    assert json.loads((out / "restored" / f"{name}.json").read_text())["input"] == str(
        data / source)


def test_one_run_at_a_time_per_output_folder(tmp_path, capsys, no_models):
  _png(tmp_path / "in" / "x.png")
  out = tmp_path / "out"
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import pathlib, sys, time
          from upzeroir_jax import jobs
          with jobs.output_lock(pathlib.Path({str(out)!r})):
            print("locked", flush=True)
            time.sleep(120)
      """)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
      text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunError, match="another run is writing"), jobs.output_lock(out):
      pass
    code = cli.main(["upzeroir", "restore", f"--input={tmp_path / 'in'}", f"--output={out}",
                     "--task=lowlight", "--model=tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"another run is writing to {out}" in err[0]
    code = run_lib.main([run_lib.PROG, f"--dataset_dir={tmp_path / 'in'}",
                         f"--output_dir={out}", *TINY])
    assert code == 2 and "another run is writing" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [jobs.LOCK_NAME]
  finally:
    holder.kill()
    holder.wait()
  with jobs.output_lock(out):  # the kernel released the dead holder's lock
    pass


def test_unusable_inputs_fail_before_any_model_is_loaded(tmp_path, capsys, no_models):
  src = tmp_path / "in"
  src.mkdir()
  (src / "text.png").write_text("not an image")
  (src / "empty.png").write_bytes(b"")
  io.write_image(tmp_path / "ok.png", np.random.default_rng(0).random((12, 16, 3)))
  (src / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])  # inside IDAT
  code = cli.main(["upzeroir", "restore", f"--input={src}", f"--output={tmp_path / 'out'}",
                   *TINY])
  std = capsys.readouterr()
  err = std.err.strip().splitlines()
  assert code == 2 and "restored 0, skipped 0" in std.out and "failed 3" in std.out
  assert err[0] == "upzeroir: error: 3 images could not be restored:"
  assert sorted(line.split(":")[0].strip() for line in err[1:]) == [
      str(src / n) for n in ("cut.png", "empty.png", "text.png")]
  code = cli.main(["upzeroir", "restore", f"--input={tmp_path / 'ok.png'}",
                   f"--output={tmp_path / 'out' / 'ok.jpg'}", *TINY, "--bits=16"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and err == [
      f"upzeroir: error: {tmp_path / 'out' / 'ok.jpg'}: --bits=16 needs a .png output"]


def test_resume_is_refused_for_outputs_of_other_settings(tmp_path):
  config = flags_lib.config_from_flags(_tiny_flags(), "lowlight")
  settings = pipeline.Settings(size=64)
  key = pipeline.resume_key(config, settings, "tiny", "none")
  job = jobs.Job(name="a.png", source=tmp_path / "a.png", output=tmp_path / "out" / "a.png")
  _png(job.output)
  jobs.sidecar_path(job.output).write_text(json.dumps({"settings": key}))
  records.check_resume([job], key, overwrite=False)
  for other in (pipeline.resume_key(config, settings, "tiny", "niqe"),
                pipeline.resume_key(config.replace(steps=5), settings, "tiny", "none"),
                pipeline.resume_key(config, pipeline.Settings(size=128), "tiny", "none")):
    with pytest.raises(RunError, match="was restored with other settings"):
      records.check_resume([job], other, overwrite=False)
    records.check_resume([job], other, overwrite=True)
  jobs.sidecar_path(job.output).write_text(json.dumps({"seed": 0}))  # an older sidecar
  with pytest.raises(RunError, match="it has no settings record"):
    records.check_resume([job], key, overwrite=False)


def _restore(capsys, argv):
  """(exit code, stdout, stderr lines) of `cli.main(argv)`."""
  code = cli.main(argv)
  std = capsys.readouterr()
  return code, std.out, std.err.strip().splitlines()


@pytest.mark.slow
def test_odd_names_restore_and_resume_trusts_only_matching_pairs(tmp_path, use_tiny, capsys,
                                                                 monkeypatch, caplog):
  src, out = tmp_path / "in", tmp_path / "out"
  rng = np.random.default_rng(0)
  odd = pathlib.Path(os.fsdecode(bytes(src) + b"/caf\xe9.png"))
  longest = src / ("p" * 251 + ".png")  # 255 bytes: its sidecar name would have 256
  for path in (odd, longest, src / "good.png"):
    io.write_image(path, rng.random((12, 16, 3)))
  argv = ["upzeroir", "restore", f"--input={src}", f"--output={out}", *TINY]
  code, text, err = _restore(capsys, argv)
  assert code == 0 and "restored 3, skipped 0" in text, err
  for path in (odd, longest, src / "good.png"):
    output = out / jobs.output_names([path])[0]
    assert records.finished(output)
    assert records.read_sidecar(output)["input"] == str(path)
  first = (out / "good.png").read_bytes()
  # Log lines name the odd file with its bytes escaped: a log file (UTF-8) can hold them.
  logged = [r.getMessage() for r in caplog.records]
  assert any("caf\\xe9.png" in m for m in logged), logged
  for message in logged:
    message.encode("utf-8")

  # Redone with another seed, the sidecar write of good.png fails (disk full) after its new
  # image is in place: the old sidecar (seed 0) stays beside an image it does not describe.
  write_json = io.write_json

  def disk_full(path, record):
    if pathlib.Path(path).name == "good.json":
      raise io.WriteError(f"{path}: cannot write (No space left on device)")
    write_json(path, record)

  monkeypatch.setattr(io, "write_json", disk_full)
  code, text, err = _restore(capsys, argv + ["--seed=1", "--overwrite"])
  assert code == 2 and "restored 2, skipped 0" in text
  assert err[-1] == f"upzeroir: error: {out / 'good.json'}: cannot write (No space left on device)"
  assert (out / "good.png").read_bytes() != first
  monkeypatch.setattr(io, "write_json", write_json)

  # Seed 0 again: the two pairs of seed 1 are refused, so redo them; good.png's image is not
  # the one its seed-0 sidecar names, so it is redone, not skipped.
  for path in (odd, longest):
    (out / jobs.output_names([path])[0]).unlink()
  code, text, err = _restore(capsys, argv)
  assert code == 0 and "restored 3, skipped 0" in text, err
  assert (out / "good.png").read_bytes() == first  # the same key gives the same image

  # A replaced input is noticed although its name, size and settings are the same.
  io.write_image(src / "good.png", rng.random((12, 16, 3)))
  code, _, err = _restore(capsys, argv)
  assert code == 2 and len(err) == 1
  assert f"{out / 'good.png'} was restored from another version of its input" in err[0]
  assert [source for source, _ in use_tiny] == ["tiny"] * 3
