"""eval.run on the tiny random SD: dataset layouts, resuming, and sharded == single device."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tiny_runs

from eval import folders, run
from upzeroir_jax import config as config_lib
from upzeroir_jax import io, loading, sampling_summary

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = tiny_runs.CLI_FLAGS
SIZES = {"1": (30, 40), "2": (64, 64), "3": (17, 90)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A LOLv1-style folder: low/ (degraded) and high/ (ground truth), three pairs."""
  root = tmp_path_factory.mktemp("lol")
  rng = np.random.default_rng(0)
  for name, shape in SIZES.items():
    clean = rng.random(shape + (3,))
    io.write_image(root / "high" / f"{name}.png", clean)
    io.write_image(root / "low" / f"{name}.png", 0.3 * clean)
  return root


@pytest.fixture(scope="module")
def single_device_run(dataset, tmp_path_factory):
  """eval.run in this process (one CPU device), with the tiny models."""
  out = tmp_path_factory.mktemp("run1")
  loaded = loading.load_models("tiny", scorer="none")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(loading, "load_models", lambda source, **kw: loaded)
    code = run.main([run.PROG, f"--dataset_dir={dataset}", f"--output_dir={out}",
                     "--benchmark=LOLv1", *TINY])
  return out, code, loaded


@pytest.mark.slow
def test_run_restores_pairs_with_their_ground_truth(single_device_run, dataset):
  out, code, _ = single_device_run
  assert code == 0
  settings = json.loads((out / run.RUN_FILE).read_text())
  assert settings["benchmark"] == "LOLv1" and settings["variant"] == "full"
  assert settings["input_dir"] == str(dataset / "low") and settings["smoke_test"] is True
  assert settings["config"]["pcdm_features"] == [8, 8, 8]
  for name, shape in SIZES.items():
    assert io.read_image(out / "restored" / f"{name}.png").shape == shape + (3,)
    meta = json.loads((out / "restored" / f"{name}.json").read_text())
    assert meta["gt"] == str(dataset / "high" / f"{name}.png")
    assert meta["benchmark"] == "LOLv1" and meta["devices"] == 1


@pytest.mark.slow
def test_interrupted_run_resumes_without_redoing_finished_images(single_device_run, dataset,
                                                                 tmp_path, capsys):
  out, _, loaded = single_device_run
  work = tmp_path / "run"
  work.mkdir()
  for item in out.iterdir():  # a copy, so the other tests keep the complete run
    if item.is_dir():
      (work / item.name).mkdir()
      for f in item.iterdir():
        (work / item.name / f.name).write_bytes(f.read_bytes())
    else:
      (work / item.name).write_bytes(item.read_bytes())
  # Interrupted while writing image 3: its image is there, its sidecar is not.
  (work / "restored" / "3.json").unlink()
  stamps = {n: (work / "restored" / f"{n}.png").stat().st_mtime_ns for n in ("1", "2")}
  capsys.readouterr()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(loading, "load_models", lambda source, **kw: loaded)
    code = run.main([run.PROG, f"--dataset_dir={dataset}", f"--output_dir={work}",
                     "--benchmark=LOLv1", *TINY])
    assert code == 0
    assert "restored 1, skipped 2 finished" in capsys.readouterr().out
    assert {n: (work / "restored" / f"{n}.png").stat().st_mtime_ns for n in stamps} == stamps
    assert (work / "restored" / "3.json").is_file()
    np.testing.assert_array_equal(io.read_image(work / "restored" / "3.png"),
                                  io.read_image(out / "restored" / "3.png"))
    # Resuming with other settings would mix two configurations in one folder.
    code = run.main([run.PROG, f"--dataset_dir={dataset}", f"--output_dir={work}", *TINY,
                     "--override=guidance_scale=1000"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "holds a run with another config" in err[0]


@pytest.mark.slow
def test_four_devices_give_the_single_device_result(single_device_run, dataset, tmp_path):
  out1, _, _ = single_device_run
  out4 = tmp_path / "run4"
  script = textwrap.dedent(f"""
      import sys
      from eval import run
      sys.exit(run.main([run.PROG, "--dataset_dir={dataset}", "--output_dir={out4}",
                         "--benchmark=LOLv1", *{TINY!r}, "--batch=4"]))
  """)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=False,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in SIZES:
    meta = json.loads((out4 / "restored" / f"{name}.json").read_text())
    assert meta["devices"] == 4 and meta["timings"]["batch_images"] == 3
    a = io.read_image(out1 / "restored" / f"{name}.png")
    b = io.read_image(out4 / "restored" / f"{name}.png")
    assert np.abs(a - b).max() <= 1 / 255 + 1e-6 and np.mean(a != b) < 0.01


def test_benchmark_layouts_and_ground_truth_matching(tmp_path):
  for sub in ("Low", "Normal"):  # LOLv2
    (tmp_path / "lolv2" / sub).mkdir(parents=True)
  inputs, gt = run.resolve_dataset(str(tmp_path / "lolv2"), None, tmp_path)
  assert (inputs.name, gt.name) == ("Low", "Normal")
  for sub in ("hazy", "gt"):  # HSTS
    (tmp_path / "hsts" / sub).mkdir(parents=True)
  io.write_image(tmp_path / "hsts" / "gt" / "0586.jpg", np.zeros((4, 4, 3)))
  inputs, gt = run.resolve_dataset(str(tmp_path / "hsts"), None, tmp_path)
  assert (inputs.name, gt.name) == ("hazy", "gt")
  assert folders.ground_truth(gt, inputs / "0586.png") == gt / "0586.jpg"
  assert folders.ground_truth(gt, inputs / "0586_0.8_0.2.jpg") == gt / "0586.jpg"
  assert folders.ground_truth(gt, inputs / "0001.png") is None
  inputs, gt = run.resolve_dataset(str(tmp_path / "hsts" / "hazy"), None, tmp_path)
  assert inputs.name == "hazy" and gt is None


def test_missing_dataset_gives_exit_2_and_one_line(tmp_path, capsys):
  code = run.main([run.PROG, f"--dataset_dir={tmp_path / 'none'}", f"--output_dir={tmp_path}",
                   "--task=dehaze"])
  err = capsys.readouterr().err.strip().splitlines()
  want = f"{run.PROG}: error: --dataset_dir={tmp_path / 'none'}: no such folder"
  assert code == 2 and err == [want]


@pytest.mark.parametrize("args,message", [
    (["--task=lowlight", "--protocol=ldrps"], "--grid=upsample keeps each photo's full size"),
    (["--task=denoise"], "--grid=upsample carries the input's noise to full resolution"),
])
def test_upsample_grid_refusals_give_exit_2_and_one_line(tmp_path, capsys, args, message):
  code = run.main([run.PROG, f"--dataset_dir={tmp_path}", f"--output_dir={tmp_path / 'o'}",
                   "--grid=upsample", *args])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith(f"{run.PROG}: error: {message}")
  assert not (tmp_path / "o").exists()


def test_sidecar_dqr_record_from_the_loop_info():
  config = config_lib.preset("lowlight", steps=50)
  info = {"steps": np.int32(37), "unet_evals": np.int32(37), "restarts": np.int32(1),
          "stop_reason": np.int32(1), "stop_t": np.int32(81), "best_score": np.float32(0.625),
          "checks": np.int32(2), "scores": np.array([0.5, 0.625, np.nan], np.float32),
          "score_t": np.array([481, 81, -1], np.int32)}
  assert sampling_summary.dqr(info, config) == {
      "enabled": True, "steps": 37, "unet_evals": 37, "restarts": 1, "stop_reason": "settled",
      "stop_t": 81, "best_score": 0.625, "scores": [0.5, 0.625], "score_t": [481, 81]}
  assert sampling_summary.dqr({}, config.replace(dqr=False)) == {"enabled": False, "steps": 50}


def test_sidecar_guard_record_and_the_failure_it_reports():
  fine = {"failure": np.int32(0), "failure_t": np.int32(-1), "recoveries": np.int32(1)}
  guard = sampling_summary.guard(fine)
  assert guard == {"recoveries": 1, "failure": None, "failure_t": None}
  assert sampling_summary.guard_problem(guard) is None
  failed = sampling_summary.guard({**fine, "failure": np.int32(1), "failure_t": np.int32(341),
                                   "recoveries": np.int32(2)})
  assert failed == {"recoveries": 2, "failure": "non_finite", "failure_t": 341}
  problem = sampling_summary.guard_problem(failed)
  assert "non_finite at t = 341" in problem and "no image written" in problem


def test_auto_task_groups_images_by_identified_preset(tmp_path, monkeypatch, kodak_dir):
  """--task=auto: each image restored with its identified preset, both in one batch;
  run.json keeps every preset."""
  from test_cli import auto_inputs, record_runs

  auto_inputs(tmp_path / "in", kodak_dir)
  compiled, batches = record_runs(monkeypatch)
  args = [a for a in TINY if not a.startswith("--task")]
  assert run.main([run.PROG, f"--dataset_dir={tmp_path / 'in'}",
                   f"--output_dir={tmp_path / 'out'}", "--task=auto", *args]) == 0
  assert len(compiled) == 1 and len(batches) == 1
  assert list(batches[0].w_exp) == [config_lib.preset(t).w_exp for t in ("lowlight", "denoise")]
  for stem, task in (("dark", "lowlight"), ("noisy", "denoise")):
    meta = json.loads((tmp_path / "out" / run.RESTORED / f"{stem}.json").read_text())
    assert meta["task"] == task and meta["auto"]["task"] == task
  settings = json.loads((tmp_path / "out" / run.RUN_FILE).read_text())
  assert settings["task"] == "auto"
  assert settings["config"]["denoise"]["lambda_per"] == 5e-4
