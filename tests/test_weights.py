"""Missing weights named all at once with where to get them; unreadable weights name the file."""

import numpy as np
import pytest
import safetensors.numpy

from upzeroir_jax import cli, io, loading, weights
from upzeroir_jax.models import vgg

VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
ARNIQA = "https://github.com/miccunifi/ARNIQA/releases/download/weights/ARNIQA.pth"
REGRESSOR = "https://github.com/miccunifi/ARNIQA/releases/download/weights/regressor_kadid10k.pth"


def _never_cached(repo_id):
  return False


def test_every_missing_file_is_listed_with_its_download_and_converter(tmp_path):
  vgg_path = str(tmp_path / "vgg16.safetensors")
  found = weights.missing("stabilityai/stable-diffusion-2-1-base", vgg_path,
                          str(tmp_path / "arniqa"), "arniqa", sd_cached=_never_cached)
  assert [m.what.split(" (")[0] for m in found] == [
      "Stable Diffusion stabilityai/stable-diffusion-2-1-base", "VGG16 weights",
      "ARNIQA weights"]
  sd_, vgg_, arniqa_ = (m.describe() for m in found)
  assert "https://huggingface.co/stabilityai/stable-diffusion-2-1-base" in sd_
  assert "python -m weights.convert_sd --source=stabilityai/stable-diffusion-2-1-base" in sd_
  assert VGG_URL in vgg_ and f"`{vgg.converter(vgg_path)}`" in vgg_ and vgg_path in vgg_
  assert ARNIQA in arniqa_ and REGRESSOR in arniqa_
  assert "python -m weights.convert_arniqa" in arniqa_ and "--scorer=niqe" in arniqa_
  assert str(tmp_path / "arniqa" / "arniqa_encoder.safetensors") in arniqa_


def test_a_hub_model_not_yet_downloaded_is_fetched_when_nothing_else_is_missing(tmp_path):
  vgg_path = tmp_path / "vgg16.safetensors"
  vgg_path.write_bytes(b"present")
  assert weights.missing("stabilityai/stable-diffusion-2-1-base", str(vgg_path), "x", "niqe",
                         sd_cached=_never_cached) == []


def test_offline_hub_model_and_missing_local_model_are_reported(tmp_path, monkeypatch):
  vgg_path = tmp_path / "vgg16.safetensors"
  vgg_path.write_bytes(b"present")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  (found,) = weights.missing("owner/model", str(vgg_path), "x", "none", sd_cached=_never_cached)
  assert "HF_HUB_OFFLINE" in found.what and "https://huggingface.co/owner/model" in found.download
  (found,) = weights.missing(str(tmp_path / "no_sd"), str(vgg_path), "x", "none")
  assert found.path == str(tmp_path / "no_sd") and found.what == "Stable Diffusion model"


def test_scorer_choice_decides_whether_arniqa_is_needed(tmp_path):
  vgg_path = tmp_path / "vgg16.safetensors"
  vgg_path.write_bytes(b"present")
  for scorer in ("niqe", "none"):
    assert weights.missing("tiny-not", str(vgg_path), str(tmp_path), scorer,
                           sd_cached=_never_cached)[1:] == []
  assert weights.missing("tiny", "absent", "absent", "arniqa") == []  # smoke test: random


def test_cli_names_all_missing_weights_in_one_message(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(weights, "hub_cached", _never_cached)
  img = tmp_path / "x.png"
  io.write_image(img, np.zeros((8, 8, 3)))
  code = cli.main(["upzeroir", "restore", f"--input={img}", "--output=out/", "--task=lowlight",
                   "--compilation_cache="])
  err = capsys.readouterr().err.splitlines()
  errors = [line for line in err if line.startswith("upzeroir: error:")]
  assert code == 2 and len(errors) == 1
  assert errors[0] == "upzeroir: error: 3 weights files are missing; download and convert:"
  details = err[err.index(errors[0]) + 1:]
  assert len(details) == 3 and all(line.startswith("  ") for line in details)
  assert "Stable Diffusion" in details[0] and VGG_URL in details[1] and ARNIQA in details[2]
  assert "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("content", [b"", b"\x00" * 40, b"not a safetensors file at all"])
def test_unreadable_vgg_file_is_exit_2_naming_the_file(tmp_path, capsys, content):
  bad = tmp_path / "vgg16.safetensors"
  bad.write_bytes(content)
  img = tmp_path / "x.png"
  io.write_image(img, np.zeros((8, 8, 3)))
  with pytest.raises(weights.CorruptWeightsError,
                     match=f"^{bad}: not a complete safetensors file .*; rebuild it with "
                           "`python -m weights.convert_vgg"):
    loading.load_models("tiny", vgg_path=str(bad), scorer="none")
  code = cli.main(["upzeroir", "restore", f"--input={img}", f"--output={tmp_path / 'o'}/",
                   "--task=lowlight", "--model=tiny", f"--vgg={bad}", "--compilation_cache="])
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith("upzeroir: error:")]
  assert code == 2 and len(errors) == 1 and str(bad) in errors[0]
  assert "rebuild it with `python -m weights.convert_vgg" in errors[0]


def test_a_checkpoint_of_another_model_is_reported_as_unusable(tmp_path):
  other = tmp_path / "other.safetensors"
  safetensors.numpy.save_file({"w": np.zeros(3, np.float32)}, str(other),
                              metadata={"model": "lpips"})
  with pytest.raises(weights.CorruptWeightsError,
                     match=r"other.safetensors: not a VGG16 checkpoint \(its metadata says "
                           r"model='lpips'\); rebuild it with `python -m weights.convert_vgg"):
    weights.load_checked(vgg.load, other, "VGG16", vgg.converter(str(other)))
