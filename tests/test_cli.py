"""The `upzeroir` console script end to end on the tiny random SD, and its error handling."""

import dataclasses
import io as std_io
import json
import logging
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_runs
from absl import flags
from PIL import Image

from upzeroir_jax import auto, cli, config, io, loading, pipeline
from upzeroir_jax.io import grid as grid_lib
from upzeroir_jax.io import upsample
from upzeroir_jax.sampler import state

TINY = tiny_runs.CLI_FLAGS
# The closing line of a program's preparation, whichever way it was prepared.
PREPARED = (r"compiled in [\d.]+ s.*; saved in the compilation cache for later runs"
            r"|loaded compiled program from cache in [\d.]+ s.*"
            r"|program ready in [\d.]+ s, compiled earlier in this process")


def _inputs(folder):
  """Grayscale, RGBA, 16-bit, an odd-sized JPEG and a broken file; returns {name: (H, W)}."""
  folder.mkdir()
  Image.fromarray(np.linspace(0, 255, 50 * 70).reshape(50, 70).astype(np.uint8), "L").save(
      folder / "gray.png")
  rgba = np.random.default_rng(0).integers(0, 256, (33, 47, 4), dtype=np.uint8)
  Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
  deep = (np.random.default_rng(1).random((40, 30)) * 65535).astype(np.uint16)
  Image.fromarray(deep).save(folder / "deep.png")  # mode I;16: a 16-bit grayscale PNG
  Image.fromarray(np.random.default_rng(2).integers(0, 256, (399, 601, 3), dtype=np.uint8)).save(
      folder / "odd.jpg", quality=90)
  (folder / "broken.png").write_bytes((folder / "gray.png").read_bytes()[:60])
  return {"gray": (50, 70), "rgba": (33, 47), "deep": (40, 30), "odd": (399, 601)}


@pytest.mark.slow
def test_restores_any_input_to_its_own_size_and_resumes(tmp_path, use_tiny, capsys, caplog,
                                                        monkeypatch):
  sizes = _inputs(tmp_path / "in")
  out = tmp_path / "out"
  argv = ["upzeroir", "restore", f"--input={tmp_path / 'in'}", f"--output={out}", *TINY]
  with caplog.at_level(logging.INFO):
    assert cli.main(argv) == 2  # broken.png cannot be read; the others are restored
  # stderr is not a terminal here: phases and one plain log line per image. The program was
  # compiled here, or by an earlier test of this process (from its memory or the disk cache).
  logged = [r.getMessage() for r in caplog.records]
  assert "preparing the program ..." in logged
  assert any(re.fullmatch(PREPARED, m) for m in logged), logged
  assert sorted(m.split(" (")[0] for m in logged if m.startswith("restored ")) == [
      "restored 1/4 deep.png", "restored 2/4 gray.png", "restored 3/4 odd.jpg",
      "restored 4/4 rgba.png"]  # broken.png is named up front, not counted
  std = capsys.readouterr()
  err = std.err.strip().splitlines()
  broken = f"{tmp_path / 'in' / 'broken.png'}: truncated"
  assert len(err) == 2  # named before the models are loaded, and listed at the end
  assert err[0].startswith(f"upzeroir: cannot restore {broken}")
  assert err[0].endswith("; restoring the others")
  assert err[1].startswith(f"upzeroir: error: {broken}")
  assert "Traceback" not in std.err and "restored 4, skipped 0" in std.out
  assert use_tiny == [("tiny", {"vgg_path": "checkpoints/vgg16.safetensors",
                                "arniqa_dir": "checkpoints/arniqa", "scorer": "none"})]
  for name, (h, w) in sizes.items():
    assert io.read_image(out / f"{name}.png").shape == (h, w, 3)
    meta = json.loads((out / f"{name}.json").read_text())
    assert meta["grid"]["input_shape"] == [h, w] and meta["grid"]["shape"] == [64, 64]
    assert meta["model"]["source"] == "tiny" and meta["model"]["smoke_test"] is True
    assert meta["seed"] == 0 and meta["config"]["steps"] == 4 and meta["task"] == "lowlight"
    assert meta["dqr"] == {"enabled": False, "steps": 4}
    assert meta["guard"] == {"recoveries": 0, "failure": None, "failure_t": None}
    assert meta["timings"]["batch_images"] in (1, 2) and meta["timings"]["batch_s"] > 0
  assert not (out / "broken.png").exists()

  stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
  both = std_io.StringIO()  # stdout and stderr as a terminal shows them, in order
  with monkeypatch.context() as m:
    m.setattr(sys, "stdout", both)
    m.setattr(sys, "stderr", both)
    assert cli.main(argv) == 2
  # The failure, then the summary and the smoke-test notice close the run.
  last = both.getvalue().splitlines()[-3:]
  assert last[0].startswith(f"upzeroir: error: {broken}")
  assert last[1] == ("upzeroir: restored 0, skipped 4 already finished (--overwrite redoes "
                     f"them), failed 1; outputs in {out}")
  assert last[2].startswith("upzeroir: SMOKE TEST: ")
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

  # Alone (batch filled with copies of itself) it gets the same key, so the same result. With
  # this process's in-memory programs dropped, as in a new run, the same program is loaded
  # from the compilation cache folder that the first run used.
  jax.clear_caches()
  caplog.clear()
  single = tmp_path / "single.png"
  with caplog.at_level(logging.INFO):
    assert cli.main(["upzeroir", "restore", f"--input={tmp_path / 'in' / 'odd.jpg'}",
                     f"--output={single}", *TINY]) == 0
  logged = [r.getMessage() for r in caplog.records]
  assert any(m.startswith("loaded compiled program from cache in ") for m in logged), logged
  assert "compiling ..." not in logged
  diff = np.abs(io.read_image(single) - io.read_image(out / "odd.png"))
  assert diff.max() <= 1 / 255 + 1e-6


@pytest.mark.slow
def test_pad_grid_keeps_small_images_exact_size(tmp_path, use_tiny):
  io.write_image(tmp_path / "a.png", np.random.default_rng(3).random((20, 61, 3)))
  out = tmp_path / "a_out.png"
  assert cli.main(["upzeroir", "restore", f"--input={tmp_path / 'a.png'}", f"--output={out}",
                   *TINY, "--grid=pad"]) == 0
  meta = json.loads(out.with_suffix(".json").read_text())
  assert meta["grid"] == {"mode": "pad", "shape": [64, 64], "input_shape": [20, 61]}
  assert io.read_image(out).shape == (20, 61, 3)


@pytest.mark.slow
def test_upsample_grid_carries_the_grid_restoration_to_full_size(tmp_path, use_tiny,
                                                                 monkeypatch):
  """The photo is restored on the 64² grid (the program of the other tiny runs), and the output
  is the guided transform of that restoration applied to the full-size input."""
  full = np.random.default_rng(4).random((90, 157, 3))
  io.write_image(tmp_path / "a.png", full)
  carried, carry = [], upsample.carry

  def spy(full, grid_input, restored, **kw):
    carried.append((full, grid_input, restored, carry(full, grid_input, restored)))
    return carried[-1][-1]

  monkeypatch.setattr(grid_lib.upsample, "carry", spy)
  out = tmp_path / "a_out.png"
  assert cli.main(["upzeroir", "restore", f"--input={tmp_path / 'a.png'}", f"--output={out}",
                   *TINY, "--grid=upsample"]) == 0
  meta = json.loads(out.with_suffix(".json").read_text())
  assert meta["grid"] == {"mode": "upsample", "shape": [64, 64], "input_shape": [90, 157],
                          "transform": {"radius": upsample.RADIUS, "eps": upsample.EPS}}
  assert (meta["settings"]["grid"], meta["settings"]["size"]) == ("upsample", 64)
  [(seen_full, grid_input, restored, result)] = carried
  np.testing.assert_array_equal(seen_full, io.read_image(tmp_path / "a.png"))
  np.testing.assert_array_equal(grid_input, io.to_model_grid(seen_full, 64, "resize", 64)[0])
  assert restored.shape == (64, 64, 3)
  assert np.abs(io.read_image(out) - result).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("args,needle", [
    (["restore", "--input=.", "--output=o", "--task=mixed", "--grid=upsample"],
     "so it does not apply to --task=mixed; use --grid=resize or --grid=pad"),
    (["restore", "--input=/nonexistent/x.png", "--output=o", "--task=lowlight"],
     "--input=/nonexistent/x.png: no such file or folder"),
    (["restore", "--input=.", "--output=o", "--task=sharpen"], "value should be one of"),
    (["restore", "--input=README.md"], "--output"),
    (["repair", "--input=.", "--output=o", "--task=lowlight"], "unknown command 'repair'"),
    (["restore", "--input=x.png", "--output=./x.png", "--task=lowlight"], "is the input itself"),
    (["restore", "--input=.", "--output=o", "--task=lowlight", "--override=nope=1"],
     "--override=nope=1"),
    (["restore", "--input=.", "--output=o", "--task=lowlight", "--model=tiny", "--size=100"],
     "--size=100 must be a positive multiple of 64"),
])
def test_bad_input_gives_exit_2_and_one_line(tmp_path, monkeypatch, capsys, args, needle):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "README.md").write_text("not an image")
  io.write_image(tmp_path / "x.png", np.zeros((8, 8, 3)))
  if "--model=tiny" in args:  # fails on the grid size, before the models are used
    monkeypatch.setattr(loading, "load_models", lambda source, **kw: loading.Loaded(
        models=None, source=source, smoke_test=True, scorer="none",
        text_context=lambda p: None, multiple=64, notes={}))
  code = cli.main(["upzeroir", *args])
  err = capsys.readouterr().err
  assert code == 2
  assert len(err.strip().splitlines()) == 1 and err.startswith("upzeroir: error: ")
  assert needle in err and "Traceback" not in err


def test_help_and_no_arguments(capsys):
  assert cli.main(["upzeroir", "--help"]) == 0
  out = capsys.readouterr().out
  assert "usage: upzeroir restore --input=FILE|DIR" in out
  assert "--model:" in out and "--input:" in out and "upzeroir_jax.flags:" not in out
  assert cli.main(["upzeroir"]) == 2
  assert "--task: <auto|lowlight|dehaze|denoise|mixed>" in capsys.readouterr().out


def test_console_script_prints_no_traceback(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "upzeroir_jax.cli", "restore", f"--input={tmp_path / 'no.png'}",
       f"--output={tmp_path}", "--task=denoise"],
      check=False, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      f"upzeroir: error: --input={tmp_path / 'no.png'}: no such file or folder")


def auto_inputs(folder, kodak_dir):
  """A dark and a noisy kodim23 (64×64) in `folder`."""
  x, dark = tiny_runs.pair(kodak_dir)
  noisy = np.clip(x + 40 / 255 * np.random.default_rng(0).standard_normal(x.shape), 0, 1)
  folder.mkdir()
  io.write_image(folder / "dark.png", dark)
  io.write_image(folder / "noisy.png", noisy)


def record_runs(monkeypatch, fail_rows=()):
  """Runs the real pipeline (pre-flight, resume, grouping, sidecars) with models that are never
  used and a stand-in for the compiled restoration that returns its input: the restoration
  itself is restore's business (its own tests). The batch rows `fail_rows` come back failed by
  the divergence guard (non-finite at t = 341). Returns the (static) configs compiled and the
  per-image settings (`LossWeights`, one value per row) of each batch, in order."""
  compiled, batches = [], []
  monkeypatch.setattr(loading, "load_models", lambda source, **kw: loading.Loaded(
      models=None, source=source, smoke_test=True, scorer="none",
      text_context=lambda p: None, multiple=64, notes={}))

  def compile_(ctx, full_shape, text, config, lowered):
    del ctx, full_shape, text
    lowered("jit_restore_sharded")
    compiled.append(config)

    def restored(models, ys, keys, weights, ctx):
      del models, ctx
      batches.append(jax.tree.map(np.asarray, weights))
      failure = np.isin(np.arange(len(keys)), fail_rows).astype(np.int32)
      return ys, {"failure": jnp.asarray(failure), "failure_t": jnp.where(failure, 341, -1),
                  "recoveries": jnp.asarray(2 * failure)}

    return restored

  monkeypatch.setattr(pipeline, "_compile", compile_)
  return compiled, batches


def preset_rows(tasks):
  """The `LossWeights` of a batch of the tiny presets of `tasks` on a 64×64 grid, computed
  image by image as a single `restore` call would."""
  rows = [state.loss_weights(config.preset(t, **TINY_OVERRIDES), 64 * 64) for t in tasks]
  return jax.tree.map(lambda *v: np.stack([np.asarray(x) for x in v]), *rows)


TINY_OVERRIDES = {"steps": 4, "dqr": False, "pcdm_features": (8, 8, 8),
                  "disc_features": (8, 8, 8)}


def test_auto_task_restores_each_image_with_its_preset_and_records_it(
    tmp_path, monkeypatch, kodak_dir, capsys):
  """Default --task=auto: the dark and the noisy image get the low-light and denoise presets,
  in one batch of one compiled program, and their sidecars record what was identified, the
  estimates and the preset used; each input is identified once and read twice (check,
  restore)."""
  auto_inputs(tmp_path / "in", kodak_dir)
  compiled, batches = record_runs(monkeypatch)
  identified, reads = [], []
  choose, read = auto.choose_task, io.read_image
  monkeypatch.setattr(auto, "choose_task", lambda img, name="": (
      identified.append(name), choose(img, name))[1])
  monkeypatch.setattr(io, "read_image", lambda path, *a, **k: (
      reads.append(pathlib.Path(path).name), read(path, *a, **k))[1])
  out = tmp_path / "o"
  args = [a for a in TINY if not a.startswith("--task")]
  assert cli.main(["upzeroir", "restore", f"--input={tmp_path / 'in'}", f"--output={out}",
                   *args]) == 0
  assert "restored 2, skipped 0" in capsys.readouterr().out
  assert sorted(identified) == ["dark.png", "noisy.png"]
  assert sorted(reads) == ["dark.png", "dark.png", "noisy.png", "noisy.png"]
  assert compiled == [state.weightless(config.preset("lowlight", **TINY_OVERRIDES))]
  assert len(batches) == 1
  want = preset_rows(["lowlight", "denoise"])  # dark.png, noisy.png: rows 0 and 1
  assert want.w_exp[0] != want.w_exp[1]
  for name in state.WEIGHT_FIELDS:
    np.testing.assert_array_equal(getattr(batches[0], name), getattr(want, name), err_msg=name)
  for stem, task, detected in (("dark", "lowlight", "lowlight"), ("noisy", "denoise", "noise")):
    preset = config.preset(task, **TINY_OVERRIDES)
    meta = json.loads((out / f"{stem}.json").read_text())
    assert meta["task"] == task and meta["config"] == json.loads(
        json.dumps(dataclasses.asdict(preset)))
    assert meta["settings"]["config"]["task"] == task
    assert meta["auto"]["detected"] == detected and meta["auto"]["task"] == task
    assert meta["auto"]["sigma"] > 0 and "haze_density" in meta["auto"]


def test_explicit_task_overrides_auto(tmp_path, monkeypatch, kodak_dir):
  """--task=dehaze: one preset for both images, nothing identified."""
  auto_inputs(tmp_path / "in", kodak_dir)
  compiled, batches = record_runs(monkeypatch)
  out = tmp_path / "o"
  args = [a for a in TINY if not a.startswith("--task")]
  assert cli.main(["upzeroir", "restore", f"--input={tmp_path / 'in'}", f"--output={out}",
                   *args, "--task=dehaze"]) == 0
  assert compiled == [state.weightless(config.preset("dehaze", **TINY_OVERRIDES))]
  want = preset_rows(["dehaze", "dehaze"])
  for name in state.WEIGHT_FIELDS:
    np.testing.assert_array_equal(getattr(batches[0], name), getattr(want, name), err_msg=name)
  for stem in ("dark", "noisy"):
    meta = json.loads((out / f"{stem}.json").read_text())
    assert meta["task"] == "dehaze" and "auto" not in meta


def test_auto_task_resumes_and_notices_a_changed_task(tmp_path, monkeypatch, kodak_dir, capsys):
  """A finished --task=auto run is skipped on a re-run; --task=dehaze, or an input whose
  identified task changed, is refused rather than kept, before any model loads."""
  auto_inputs(tmp_path / "in", kodak_dir)
  compiled, _ = record_runs(monkeypatch)
  out = tmp_path / "o"
  args = [a for a in TINY if not a.startswith("--task")]
  argv = ["upzeroir", "restore", f"--input={tmp_path / 'in'}", f"--output={out}", *args]
  assert cli.main(argv) == 0
  compiled.clear()
  capsys.readouterr()

  def no_models(source, **kw):
    raise RuntimeError("models loaded")  # the resume checks come before any model

  monkeypatch.setattr(loading, "load_models", no_models)
  assert cli.main(argv) == 0
  assert "restored 0, skipped 2" in capsys.readouterr().out and compiled == []
  assert cli.main([*argv, "--task=dehaze"]) == 2
  err = capsys.readouterr().err
  assert "dark.png was restored with other settings" in err
  assert "config.task: 'lowlight' there, 'dehaze' now" in err
  io.write_image(tmp_path / "in" / "noisy.png", io.read_image(tmp_path / "in" / "dark.png"))
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "noisy.png was restored with other settings" in err
  assert "config.task: 'denoise' there, 'lowlight' now" in err
  assert compiled == []


def test_auto_logs_one_line_for_a_clean_looking_image(tmp_path, kodak_dir, caplog):
  """A clean kodim23 gets one warning line and the least invasive preset; a dark one none."""
  x, dark = tiny_runs.pair(kodak_dir)
  job = pipeline.Job(name="x.png", source=tmp_path / "x.png", output=tmp_path / "o" / "x.png")
  with caplog.at_level(logging.INFO):
    clean = auto.inspect(job, x)
    auto.inspect(job, dark)
  warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert warned == [("x.png: no low light, haze or noise found; restoring with the least "
                     f"invasive preset ({auto.CLEAN_TASK})")]
  assert clean.extra["auto"]["detected"] == "clean" and auto.task_of(clean) == auto.CLEAN_TASK


def test_run_main_defines_verbose_and_checks_the_command(capsys):
  seen = []

  def body(fv):
    seen.append(fv.verbose)
    return 0

  argv = ["prog", "--verbose", "restore"]
  assert cli.run_main("prog", "usage", flags.FlagValues(), argv, body, command="restore") == 0
  assert seen == [True]
  for stray, command, message in ((["x"], None, "unexpected arguments: x"),
                                  ([], "restore", "unknown command '(none)'"),
                                  (["restore", "x"], "restore", "unknown command 'restore x'")):
    code = cli.run_main("prog", "usage", flags.FlagValues(), ["prog", "--verbose=false", *stray],
                        body, command=command)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"prog: error: {message}"), err
  assert seen == [True]



def test_an_image_the_guard_failed_is_reported_and_not_written(tmp_path, monkeypatch, kodak_dir,
                                                               capsys):
  """docs/method.md §3: the diverged image (row 1, noisy.png) fails alone: no image (a stale
  one is removed), a sidecar naming the reason, one line in the summary, exit code 2."""
  auto_inputs(tmp_path / "in", kodak_dir)
  record_runs(monkeypatch, fail_rows=(1,))
  out = tmp_path / "o"
  out.mkdir()
  (out / "noisy.png").write_bytes(b"stale")
  args = [a for a in TINY if not a.startswith("--task")]
  assert cli.main(["upzeroir", "restore", f"--input={tmp_path / 'in'}", f"--output={out}",
                   "--task=denoise", *args]) == 2
  err = capsys.readouterr().err
  assert "sampling diverged (non_finite at t = 341, after 2 recovered steps)" in err
  assert (out / "dark.png").exists() and not (out / "noisy.png").exists()
  meta = json.loads((out / "noisy.json").read_text())
  assert meta["guard"] == {"recoveries": 2, "failure": "non_finite", "failure_t": 341}
  assert json.loads((out / "dark.json").read_text())["guard"]["failure"] is None
