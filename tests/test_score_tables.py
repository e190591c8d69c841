"""eval.score and eval.tables on hand-made images and runs."""

import csv
import json
import os

import numpy as np
import pytest

from eval import score, tables
from upzeroir_jax import io


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR with the 1e-8 guard of pyiqa, in float64 numpy (independent of the JAX metric)."""
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float(10 * np.log10(1.0 / (mse + 1e-8)))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
  """Two restored images with ground truth: one off by +0.1 everywhere, one exact."""
  root = tmp_path_factory.mktemp("score")
  gt, out = root / "gt", root / "restored"
  rng = np.random.default_rng(0)
  flat = np.full((100, 100, 3), 0.5)
  texture = rng.random((100, 100, 3))
  io.write_image(gt / "flat.png", flat)
  io.write_image(out / "flat.png", flat + 0.1)
  io.write_image(gt / "texture.jpg", texture)  # ground truth in another format, same stem
  io.write_image(out / "texture.png", io.read_image(gt / "texture.jpg"))
  code = score.main([score.PROG, f"--restored_dir={out}", f"--gt_dir={gt}",
                     "--lpips=/nonexistent/lpips.safetensors", "--arniqa=/nonexistent"])
  return gt, out, code


@pytest.mark.slow
def test_score_writes_per_image_csv_and_means(scored):
  gt, out, code = scored
  assert code == 0
  want = {"flat": _psnr(io.read_image(out / "flat.png"), io.read_image(gt / "flat.png")),
          "texture": 80.0}  # identical images: 10·log10(1 / 1e-8)
  assert want["flat"] == pytest.approx(-20 * np.log10(25 / 255), abs=1e-3)  # 153 − 128 codes
  with open(out / "scores.csv") as f:
    rows = {r["name"]: r for r in csv.DictReader(f)}
  assert set(rows) == {"flat", "texture"}
  for name, value in want.items():
    assert float(rows[name]["psnr"]) == pytest.approx(value, abs=1e-3)
  assert float(rows["texture"]["ssim"]) == pytest.approx(1.0, abs=1e-6)
  assert float(rows["flat"]["ssim"]) < 1.0
  summary = json.loads((out / "scores.json").read_text())
  assert summary["count"] == 2
  assert summary["means"]["psnr"] == pytest.approx(np.mean(list(want.values())), abs=1e-3)
  # NIQE of a flat image is undefined (no local variance): missing there, not 0.
  assert rows["flat"]["niqe"] == "" and np.isfinite(float(rows["texture"]["niqe"]))
  assert summary["means"]["niqe"] == pytest.approx(float(rows["texture"]["niqe"]))


@pytest.mark.slow
def test_missing_weights_are_missing_not_zero(scored):
  _, out, _ = scored
  summary = json.loads((out / "scores.json").read_text())
  for metric in ("lpips", "arniqa"):
    assert summary["means"][metric] is None
    assert "not available" in summary["missing"][metric]
  with open(out / "scores.csv") as f:
    assert all(r["lpips"] == "" and r["arniqa"] == "" for r in csv.DictReader(f))


@pytest.mark.slow
def test_without_ground_truth_full_reference_metrics_are_missing(scored, tmp_path):
  _, out, _ = scored
  code = score.main([score.PROG, f"--restored_dir={out}", f"--output_dir={tmp_path}",
                     "--lpips=/nonexistent", "--arniqa=/nonexistent"])
  assert code == 0
  summary = json.loads((tmp_path / "scores.json").read_text())
  assert summary["means"]["psnr"] is None and summary["missing"]["psnr"] == "no ground truth"
  assert summary["means"]["niqe"] is not None


def test_score_rejects_size_mismatch_in_one_line(tmp_path, capsys):
  io.write_image(tmp_path / "gt" / "a.png", np.zeros((20, 30, 3)))
  io.write_image(tmp_path / "out" / "a.png", np.zeros((30, 20, 3)))
  code = score.main([score.PROG, f"--restored_dir={tmp_path / 'out'}",
                     f"--gt_dir={tmp_path / 'gt'}", "--lpips=/x", "--arniqa=/x"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "differs from its ground truth" in err[0]


def _run(root, name, benchmark, variant, means, smoke=False, mtime=None):
  folder = root / name
  folder.mkdir(parents=True)
  (folder / "run.json").write_text(json.dumps(
      {"benchmark": benchmark, "variant": variant, "smoke_test": smoke}))
  (folder / "scores.json").write_text(json.dumps({"count": 15, "means": means}))
  if mtime is not None:
    os.utime(folder / "scores.json", (mtime, mtime))
  return folder


def _row(text: str, table_title: str, first_cell: str) -> list[str]:
  section = text.split(f"### {table_title}")[1].split("### ")[0]
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if cells[0] == first_cell:
      return cells[1:]
  raise AssertionError(f"no row {first_cell!r} in {table_title!r}")


def test_tables_place_runs_beside_the_paper(tmp_path):
  lol = {"psnr": 18.1234, "ssim": 0.81234, "lpips": 0.2456, "niqe": 5.4321, "arniqa": 0.5}
  _run(tmp_path, "old", "LOLv1", "full", {**lol, "psnr": 1.0}, mtime=1_000_000)
  _run(tmp_path, "lol", "LOLv1", "full", lol, mtime=2_000_000)
  _run(tmp_path, "a/no_dqr", "LOLv1", "no_dqr", {"psnr": 17.5, "ssim": 0.8, "lpips": None})
  _run(tmp_path, "hsts", "HSTS", "full", {"psnr": 21.0, "ssim": 0.81, "lpips": None},
       smoke=True)
  text = tables.render_all(tables.find_runs(tmp_path))
  t1 = "Table 1: low-light enhancement (LOLv1, LOLv2)"
  # The latest LOLv1 run; PI is not implemented; LOLv2 has no run.
  want = ["18.12", "0.812", "0.246", "—", "5.43"] + ["—"] * 5
  assert _row(text, t1, "**upzeroir-jax**") == want
  assert _row(text, t1, "LD-RPS") == ["17.26", "0.797", "0.291", "5.02", "5.79",
                                      "18.22", "0.744", "0.335", "5.05", "6.03"]
  t2 = "Table 2: dehazing (HSTS)"
  assert _row(text, t2, "**upzeroir-jax — smoke test**") == ["21.00", "0.810", "—"]
  assert _row(text, t2, "UP-ZeroIR (paper)") == ["21.51", "0.820", "0.163"]
  t4 = "Table 4: ablations (docs/method.md §8)"
  assert _row(text, t4, "**w/o DQR (upzeroir-jax)**")[:3] == ["17.50", "0.800", "—"]
  assert _row(text, t4, "w/o PCDM (paper)")[:2] == ["17.78", "0.807"]
  assert "no upzeroir-jax runs for this table yet" in text.split("### Table 5")[1]


def test_a_row_from_fewer_images_than_the_set_is_marked_partial(tmp_path):
  inputs = tmp_path / "kodak_inputs"
  for i in range(4):
    io.write_image(inputs / f"k{i}.png", np.zeros((8, 8, 3)))
  (inputs / "notes.txt").write_text("not an image")
  kodak = _run(tmp_path, "kodak", "Kodak24", "full", {"psnr": 28.0, "ssim": 0.8, "lpips": 0.2})
  (kodak / "run.json").write_text(json.dumps({"benchmark": "Kodak24", "variant": "full",
                                              "dataset_images": 24}))
  (kodak / "scores.json").write_text(json.dumps({"count": 3, "means": {"psnr": 28.0}}))
  hsts = _run(tmp_path, "hsts", "HSTS", "full", {"psnr": 21.0})
  (hsts / "run.json").write_text(json.dumps({"benchmark": "HSTS", "variant": "full",
                                             "input_dir": str(inputs)}))  # 4 images there
  (hsts / "scores.json").write_text(json.dumps({"count": 4, "means": {"psnr": 21.0}}))
  lol = _run(tmp_path, "lol", "LOLv1", "full", {"psnr": 18.0})  # set size unknown: not marked
  text = tables.render_all(tables.find_runs(tmp_path))
  assert _row(text, "Table 3: denoising (Kodak24)", "**upzeroir-jax — partial**")[0] == "28.00"
  assert f"- Kodak24/full: 3 of 24 images (partial), {kodak}" in text
  assert _row(text, "Table 2: dehazing (HSTS)", "**upzeroir-jax**")[0] == "21.00"
  assert f"- HSTS/full: 4 images, {hsts}" in text
  assert f"- LOLv1/full: 15 images, {lol}" in text
  (hsts / "scores.json").write_text(json.dumps({"count": 3, "means": {"psnr": 21.0}}))
  text = tables.render_all(tables.find_runs(tmp_path))
  assert f"- HSTS/full: 3 of 4 images (partial), {hsts}" in text


def test_scores_json_records_the_ground_truth_folder_of_a_run(tmp_path):
  gt = tmp_path / "truth"
  run = tmp_path / "run"
  io.write_image(gt / "a.png", np.zeros((8, 8, 3)))
  pairs = [(run / "restored" / "a.png", gt / "a.png")]
  (run).mkdir()
  assert score.run_gt_dir(run, pairs) == str(gt)  # no run.json: the folder of the files
  assert score.run_gt_dir(run, [(run / "restored" / "a.png", None)]) is None
  (run / "run.json").write_text(json.dumps({"gt_dir": "/data/recorded_gt"}))
  assert score.run_gt_dir(run, pairs) == "/data/recorded_gt"


@pytest.mark.slow
def test_score_of_a_run_folder_writes_its_gt_dir(tmp_path):
  gt, run = tmp_path / "truth", tmp_path / "run"
  img = np.random.default_rng(1).random((16, 16, 3))
  io.write_image(gt / "a.png", img)
  io.write_image(run / "restored" / "a.png", img)
  (run / "restored" / "a.json").write_text(json.dumps({"gt": str(gt / "a.png")}))
  (run / "run.json").write_text(json.dumps({"gt_dir": str(gt)}))
  assert score.main([score.PROG, f"--run_dir={run}", "--lpips=/nonexistent",
                     "--arniqa=/nonexistent"]) == 0
  summary = json.loads((run / "scores.json").read_text())
  assert summary["gt_dir"] == str(gt) and summary["means"]["psnr"] == pytest.approx(80.0)
