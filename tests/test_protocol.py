"""LD-RPS's evaluation protocol (eval/protocol.py) through eval.run, eval.score and eval.tables,
against PIL's LANCZOS resize as LD-RPS's scripts call it; per-image prompts from --prompts_dir.

The runs use the real pipeline with a stand-in restoration that returns its input
(`test_cli.record_runs`), so every file written is a known function of the inputs."""

import json

import numpy as np
import pytest
import tiny_runs
from PIL import Image
from test_cli import record_runs

from eval import protocol, run, score, tables
from upzeroir_jax import io, metrics


def _lanczos_u8(img: np.ndarray, size: int) -> np.ndarray:
  """LD-RPS's resize: an 8-bit RGB PIL image, `Image.LANCZOS` to size × size."""
  return np.asarray(Image.fromarray(img, "RGB").resize((size, size), Image.LANCZOS))


def _u8(path) -> np.ndarray:
  return np.round(io.read_image(path) * 255.0).astype(np.uint8)


@pytest.fixture
def ldrps_run(tmp_path, monkeypatch):
  """eval.run --protocol=ldrps --prompts_dir on a LOLv1-style folder (a 30×40 and a 256² pair;
  a caption for "1" only) at --size=512, so the model grid is the 512² input itself."""
  rng = np.random.default_rng(0)
  data, prompts = tmp_path / "lol", tmp_path / "prompts"
  for name, shape in (("1", (30, 40)), ("2", (256, 256))):
    clean = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    io.write_image(data / "high" / f"{name}.png", clean)
    io.write_image(data / "low" / f"{name}.png", (clean // 4).astype(np.uint8))
  prompts.mkdir()
  (prompts / "1.txt").write_text("a red car in a dark street\n")
  record_runs(monkeypatch)
  out = tmp_path / "runs" / "lolv1"
  flags = [a for a in tiny_runs.CLI_FLAGS if not a.startswith("--size")] + ["--size=512"]
  code = run.main([run.PROG, f"--dataset_dir={data}", f"--output_dir={out}", "--benchmark=LOLv1",
                   "--protocol=ldrps", f"--prompts_dir={prompts}", *flags])
  assert code == 0
  return data, prompts, out


def test_ldrps_protocol_resizes_as_ldrps_and_records_prompts(ldrps_run):
  data, prompts, out = ldrps_run
  settings = json.loads((out / run.RUN_FILE).read_text())
  assert settings["protocol"] == "ldrps" and settings["prompts_dir"] == str(prompts)
  for name, prompt in (("1", "a red car in a dark street"), ("2", "")):
    model_input = out / protocol.LDRPS_INPUTS / f"{name}.png"
    want_in = _lanczos_u8(_u8(data / "low" / f"{name}.png"), 512)
    np.testing.assert_array_equal(_u8(model_input), want_in)
    # The stand-in restoration returns its 512² input; the output is that, LANCZOS to 256².
    np.testing.assert_array_equal(_u8(out / run.RESTORED / f"{name}.png"),
                                  _lanczos_u8(want_in, 256))
    meta = json.loads((out / run.RESTORED / f"{name}.json").read_text())
    assert meta["prompt"] == prompt and meta["protocol"] == "ldrps"
    assert meta["source"] == str(data / "low" / f"{name}.png")
    assert meta["input"] == str(model_input)
  assert protocol.finish_outputs(sorted((out / run.RESTORED).glob("*.png"))) == 0


def test_ldrps_scores_at_256_and_is_labelled_in_the_tables(ldrps_run, tmp_path):
  data, _, out = ldrps_run
  assert score.main([score.PROG, f"--run_dir={out}", f"--lpips={tmp_path / 'none'}",
                     f"--arniqa={tmp_path / 'none'}"]) == 0
  summary = json.loads((out / "scores.json").read_text())
  assert summary["protocol"] == "ldrps"
  rows = (out / "scores.csv").read_text().splitlines()
  for name in ("1", "2"):
    x = io.read_image(out / run.RESTORED / f"{name}.png")
    gt = _lanczos_u8(_u8(data / "high" / f"{name}.png"), 256).astype(np.float32) / 255.0
    want = float(metrics.psnr(x, gt))
    got = next(float(r.split(",")[1]) for r in rows if r.startswith(f"{name},"))
    assert got == pytest.approx(want, rel=1e-5)
  text = tables.render_all(tables.find_runs(tmp_path / "runs"))
  assert f"upzeroir-jax — smoke test — {tables.LDRPS_LABEL}" in text
  assert f"LOLv1/full: 2 images ({tables.LDRPS_LABEL})" in text


def test_score_protocol_flag_overrides_the_run(ldrps_run, tmp_path, capsys):
  """--protocol=native on the same run compares 256² outputs with the 30×40 reference: the
  size mismatch is named (exit 2), which the run's own protocol avoids."""
  _, _, out = ldrps_run
  code = score.main([score.PROG, f"--run_dir={out}", "--protocol=native",
                     f"--output_dir={tmp_path / 'native'}", f"--lpips={tmp_path / 'none'}",
                     f"--arniqa={tmp_path / 'none'}"])
  assert code == 2 and "differs from its ground truth" in capsys.readouterr().err


def test_lanczos_leaves_images_of_the_size_alone():
  img = np.random.default_rng(1).random((256, 256, 3)).astype(np.float32)
  assert protocol.lanczos(img, 256) is img
  assert protocol.reference(img, protocol.NATIVE) is img
  assert protocol.reference(img[:30, :40], protocol.LDRPS).shape == (256, 256, 3)
