"""weights/convert_sd.py: diffusers folder -> orbax checkpoint -> sd.load, without torch."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
  prompt = "a photo of a cat"
  assert got.arch.tokenizer(prompt)["input_ids"] == want.arch.tokenizer(prompt)["input_ids"]


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
