"""Our Flax SD networks (`unet`, `vae`, `clip_text`) against diffusers / transformers PyTorch.

Random weights in the real configs (SD 2.1-base, SD 1.5; the tiny configs run through `sd`
in test_sd.py, and here where a test names them), converted by `sd_params` from the PyTorch
state dicts. Errors are relative: ‖ours − torch‖ / ‖torch‖. The real configs run at a 64²
image / 8² latent, batch 1, float32.
"""

import gc
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upzeroir_jax.models import (
  clip_text,
  sd_configs,
  sd_layers,
  sd_params,
  unet,
  vae,
  weights_check,
)

torch = pytest.importorskip("torch")
sd_reference = pytest.importorskip("tests.sd_reference")

TOL = 1e-4  # the real configs
TINY_TOL = 1e-5  # the tiny ones, where a small departure (tanh GELU) leaves less of a trace
CONFIGS = {
  "tiny": sd_configs.TINY,
  "tiny_v": sd_configs.TINY_V,
  "sd21_base": sd_configs.SD21_BASE,
  "sd15": sd_configs.SD15,
}
_REAL = ("sd21_base", "sd15")
# Compile with XLA's cheap backend passes: each function runs once.
_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# The real configs take ~8 GB and minutes on a 2-core CPU: run where asked for.
_REAL_MARKS = (pytest.mark.slow, pytest.mark.skipif(
  not os.environ.get("UPZ_REAL_CONFIGS"), reason="set UPZ_REAL_CONFIGS=1 for real-config parity"))


def _names(names):
  return [pytest.param(n, marks=_REAL_MARKS) if n in _REAL else n for n in names]


def _run(f, *args):
  return jax.jit(f).lower(*args).compile(_FAST)(*args)


def _rel(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return np.linalg.norm(ours - ref) / np.linalg.norm(ref)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def _nhwc(x):
  return x.detach().numpy().transpose(0, 2, 3, 1)


def _params(part, net, module, *inputs):
  """The PyTorch network's weights converted onto `module` (shapes from its `init`)."""
  abstract = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
  state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  return sd_params.convert(part, state, abstract, lambda name: "the torch network", "fix")


@pytest.mark.parity
@pytest.mark.parametrize("name", _names(["tiny_v", "sd21_base", "sd15"]))
def test_unet_matches_diffusers(name):
  config = CONFIGS[name]
  batch = 1 if name in _REAL else 2
  rng = np.random.default_rng(0)
  z = rng.standard_normal((batch, 8, 8, 4)).astype(np.float32)
  t = np.array([981, 21][:batch], np.int32)
  ctx = rng.standard_normal((batch, 77, config["unet"]["cross_attention_dim"])).astype(np.float32)
  net = sd_reference.torch_network(config, "unet", 0)
  with torch.no_grad():
    ref = _nhwc(net(_nchw(z), torch.from_numpy(t).long(), torch.from_numpy(ctx)).sample)
  module = unet.UNet(unet.UNetConfig.from_dict(dict(net.config)))
  params = _params("unet", net, module, z, t, ctx)
  del net
  gc.collect()
  tol = TOL if name in _REAL else TINY_TOL
  assert _rel(_run(module.apply, {"params": params}, z, t, ctx), ref) < tol


@pytest.mark.parity
@pytest.mark.parametrize("name", _names(["sd21_base"]))
def test_vae_encode_decode_and_decode_vjp_match_diffusers(name):
  """SD 1.5 has the VAE of SD 2.1-base."""
  config = CONFIGS[name]
  rng = np.random.default_rng(1)
  img = rng.uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
  net = sd_reference.torch_network(config, "vae", 0)
  with torch.no_grad():
    moments = _nhwc(net.quant_conv(net.encoder(_nchw(img))))
  z = _nchw(moments[..., :4]).requires_grad_(True)
  dec = net.decode(z).sample
  cot = rng.standard_normal(dec.shape).astype(np.float32)
  (dec * torch.from_numpy(cot)).sum().backward()
  ref_dec, ref_grad, cot = _nhwc(dec), _nhwc(z.grad), cot.transpose(0, 2, 3, 1)
  module = vae.AutoencoderKL(vae.VAEConfig.from_dict(dict(net.config)))
  params = _params("vae", net, module, img)
  del net, z, dec
  gc.collect()

  def ours(params, img, z, cot):
    moments = module.apply({"params": params}, img, method=module.encode_moments)
    dec, pull = jax.vjp(lambda q: module.apply({"params": params}, q, method=module.decode), z)
    return moments, dec, pull(cot)[0]

  out = _run(ours, params, img, moments[..., :4], cot)
  for got, want in zip(out, (moments, ref_dec, ref_grad)):
    assert _rel(got, want) < TOL


@pytest.mark.parity
@pytest.mark.parametrize("name", _names(["sd21_base", "sd15"]))
def test_text_encoder_matches_clip_last_hidden_state(name):
  config = CONFIGS[name]["text_encoder"]
  length = config["max_position_embeddings"]
  ids = np.random.default_rng(2).integers(0, config["vocab_size"], (1, length)).astype(np.int32)
  net = sd_reference.torch_network(CONFIGS[name], "text_encoder", 0)
  with torch.no_grad():
    ref = net(torch.from_numpy(ids).long()).last_hidden_state.numpy()
  module = clip_text.CLIPText(clip_text.TextConfig.from_dict(net.config.to_dict()))
  params = _params("text_encoder", net, module, ids)
  del net
  gc.collect()
  assert _rel(_run(module.apply, {"params": params}, ids), ref) < TOL


@pytest.fixture(scope="module")
def tiny_vae():
  """The tiny VAE in torch, its PyTorch state dict and our module with the converted weights."""
  net = sd_reference.torch_network(sd_configs.TINY, "vae", 3)
  module = vae.AutoencoderKL(vae.VAEConfig.from_dict(dict(net.config)))
  img = np.random.default_rng(4).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
  state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  return net, state, module, img, _params("vae", net, module, img)


def test_decoder_stages_chain_to_decode(tiny_vae):
  _, _, module, _, params = tiny_vae
  z = np.random.default_rng(5).standard_normal((1, 4, 4, 4)).astype(np.float32)
  policy = sd_layers.Policy()

  def chain(params, z):
    h = z
    for stage in vae.decoder_stages(module.config, policy):
      h = stage(params, h)
    return h

  whole = _run(lambda p, z: module.apply({"params": p}, z, method=module.decode), params, z)
  np.testing.assert_allclose(_run(chain, params, z), whole, atol=1e-6)


def test_per_block_remat_checkpoints_every_block():
  """Policy.remat: each resnet, transformer block and text layer is checkpointed, on the
  parameters of the network without remat (same tree). Traced, not compiled."""

  def checkpoints(module, *args):
    plain = module.clone(policy=sd_layers.Policy())
    abstract = jax.eval_shape(plain.init, jax.random.key(0), *args)["params"]
    params = jax.tree.map(lambda a: jnp.zeros(a.shape), abstract)
    grad = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, *args)))
    return str(jax.make_jaxpr(grad)(params)).count("remat2[")

  cfg, policy = sd_configs.TINY_V, sd_layers.Policy(remat=True)
  net = unet.UNet(unet.UNetConfig.from_dict(cfg["unet"]), policy)
  args = (jnp.zeros((1, 8, 8, 4)), jnp.ones((1,), jnp.int32), jnp.zeros((1, 3, 48)))
  # Resnets: 3 down + 2 middle + 3·2 up; transformer blocks: 2 down + 1 middle + 2·2 up.
  assert checkpoints(net, *args) == 11 + 7
  assert checkpoints(net.clone(policy=sd_layers.Policy()), *args) == 0
  text = clip_text.CLIPText(clip_text.TextConfig.from_dict(cfg["text_encoder"]), policy)
  ids = jnp.zeros((1, 4), jnp.int32)
  assert checkpoints(text, ids) == cfg["text_encoder"]["num_hidden_layers"]


def test_legacy_vae_attention_names_convert(tiny_vae):
  _, state, module, img, params = tiny_vae
  legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  renamed = {}
  for name, value in state.items():
    for new, old in legacy.items():
      name = name.replace(f".{new}.", f".{old}.")
    renamed[name] = value
  assert renamed.keys() != state.keys()
  abstract = jax.eval_shape(module.init, jax.random.key(0), img)["params"]
  got = sd_params.convert("vae", renamed, abstract, lambda n: "f", "fix")
  jax.tree.map(np.testing.assert_array_equal, got, params)


@pytest.mark.parametrize("edit, message", [
  (lambda s: s.pop("encoder.conv_in.bias"), "encoder/conv_in/bias has no tensor"),
  (lambda s: s.update(extra=np.zeros(3, np.float32)), "unexpected tensor 'extra'"),
  (lambda s: s.update({"decoder.conv_in.weight": s["decoder.conv_in.weight"].T}), "has shape"),
  (lambda s: s.update({"quant_conv.bias": np.zeros(8, np.int32)}), "not a float type"),
])
def test_converter_errors_name_the_tensor(tiny_vae, edit, message):
  _, state, module, img, _ = tiny_vae
  state = dict(state)
  edit(state)
  abstract = jax.eval_shape(module.init, jax.random.key(0), img)["params"]
  with pytest.raises(weights_check.CheckpointError, match=message):
    sd_params.convert("vae", state, abstract, lambda n: "file", "fix")


def test_text_encoder_names_of_published_folders_convert():
  """Published SD folders (written by transformers 4) name the text encoder's tensors
  "text_model.…" and may hold the position-ids buffer; transformers 5 writes neither. Both
  forms convert to the same parameters."""
  net = sd_reference.torch_network(sd_configs.TINY, "text_encoder", 6)
  module = clip_text.CLIPText(clip_text.TextConfig.from_dict(sd_configs.TINY["text_encoder"]))
  state = {k.removeprefix("text_model."): v.detach().numpy() for k, v in net.state_dict().items()}
  published = {f"text_model.{k}": v for k, v in state.items()}
  published["text_model.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
  abstract = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
  got = sd_params.convert("text_encoder", published, abstract, lambda n: "f", "fix")
  want = sd_params.convert("text_encoder", state, abstract, lambda n: "f", "fix")
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)
