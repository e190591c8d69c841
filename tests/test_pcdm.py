"""PCDM, its ResBlocks ablation and the discriminators (docs/method.md §4, §8) against PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upzeroir_jax.models import pcdm


@pytest.fixture(scope="module")
def nets():
  key = jax.random.key(0)
  net, disc = pcdm.PCDM(), pcdm.Discriminator()
  return {"pcdm": (net, jax.jit(lambda k: pcdm.init(net, k))(key)),
          "disc": (disc, jax.jit(lambda k: pcdm.init(disc, k))(key))}


def test_parameter_count_is_about_one_million(nets):
  n_pcdm = pcdm.param_count(nets["pcdm"][1])
  n_disc = pcdm.param_count(nets["disc"][1])
  total = n_pcdm + 2 * n_disc
  print(f"PCDM {n_pcdm:,} + 2 x discriminator {n_disc:,} = {total:,} parameters")
  # Conv widths 64-128-256 [docs/method.md §4], counted by hand: 3·3·(3·64 + 64·128 + 128·256)
  # kernels.
  convs = 9 * (3 * 64 + 64 * 128 + 128 * 256) + 64 + 128 + 256
  assert n_disc == convs + 256 + 1
  assert n_pcdm == convs + (256 * 3 + 3) + 3 + (12 * 64 + 64) + (64 + 1) * 2 * (64 + 128 + 256)
  assert 0.9e6 < total < 1.3e6


def test_resblocks_ablation_matches_pcdm_size():
  key = jax.random.key(1)
  n_pcdm, n_res = (pcdm.param_count(jax.eval_shape(lambda k, v=v: pcdm.init(pcdm.make(v), k), key))
                   for v in ("pcdm", "resblocks"))
  print(f"PCDM {n_pcdm:,}, ResBlocks ablation {n_res:,}")
  assert abs(n_res - n_pcdm) / n_pcdm < 0.05


def _torch_conv(torch, x, kernel, bias, stride):
  w = torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1)
  pad = w.shape[-1] // 2
  return torch.nn.functional.conv2d(x, w, torch.from_numpy(np.array(bias)), stride, pad)


@pytest.mark.parity
def test_fresh_pcdm_is_the_ld_rps_conv_net_in_torch(nets):
  """Zero-initialised FiLM: a fresh PCDM equals LD-RPS's plain conv net plus the skip."""
  torch = pytest.importorskip("torch")
  net, params = nets["pcdm"]
  x = np.random.default_rng(0).random((2, 12, 10, 3), np.float32)
  theta = np.random.default_rng(1).normal(size=(2, 12)).astype(np.float32)
  got = np.asarray(net.apply({"params": params}, jnp.asarray(x), jnp.asarray(theta)))
  h = torch.from_numpy(x).permute(0, 3, 1, 2)
  for name in ("conv1", "conv2", "conv3"):
    h = torch.nn.functional.leaky_relu(
      _torch_conv(torch, h, params[name]["kernel"], params[name]["bias"], 1), 0.01)
  out = _torch_conv(torch, h, params["head"]["kernel"], params["head"]["bias"], 1)
  ref = (out.permute(0, 2, 3, 1) + torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_film_conditioning_matches_hand_written_forward(nets):
  """With nonzero FiLM weights the output is Eq. 11 written out: h·(1 + γ(θ)) + δ(θ) per layer."""
  net, params = nets["pcdm"]
  rng = np.random.default_rng(2)
  film = {**params["film"],
          "kernel": jnp.asarray(rng.normal(0, 0.05, params["film"]["kernel"].shape), jnp.float32)}
  params = {**params, "film": film}
  x = jnp.asarray(rng.random((2, 8, 8, 3), np.float32))
  theta = jnp.asarray(rng.normal(size=(2, 12)), jnp.float32)
  got = net.apply({"params": params}, x, theta)

  def conv(h, p):
    out = jax.lax.conv_general_dilated(h, p["kernel"], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + p["bias"]

  e = jax.nn.leaky_relu(theta @ params["embed"]["kernel"] + params["embed"]["bias"], 0.01)
  f = e @ film["kernel"] + film["bias"]
  h, off = x, 0
  for name, width in (("conv1", 64), ("conv2", 128), ("conv3", 256)):
    gamma, delta = f[:, off:off + width], f[:, off + width:off + 2 * width]
    off += 2 * width
    h = jax.nn.leaky_relu(conv(h, params[name]) * (1 + gamma[:, None, None])
                          + delta[:, None, None], 0.01)
  ref = conv(h, params["head"]) + x * params["w_skip"]
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  unconditioned = net.apply({"params": params}, x, jnp.zeros_like(theta))
  assert float(jnp.max(jnp.abs(got - unconditioned))) > 1e-3


@pytest.mark.parity
def test_discriminator_matches_torch_stride_two_convs(nets):
  torch = pytest.importorskip("torch")
  disc, params = nets["disc"]
  x = np.random.default_rng(3).random((2, 20, 17, 3), np.float32)
  got = np.asarray(disc.apply({"params": params}, jnp.asarray(x)))
  h = torch.from_numpy(x).permute(0, 3, 1, 2)
  for name in ("conv1", "conv2", "conv3"):
    h = torch.nn.functional.leaky_relu(
      _torch_conv(torch, h, params[name]["kernel"], params[name]["bias"], 2), 0.01)
  ref = _torch_conv(torch, h, params["head"]["kernel"], params["head"]["bias"], 1)
  np.testing.assert_allclose(got, ref.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)


def test_kaiming_init_has_fan_in_variance():
  params = jax.jit(lambda k: pcdm.init(pcdm.PCDM(), k))(jax.random.key(4))
  kernel = np.asarray(params["conv3"]["kernel"])  # fan-in 3·3·128
  assert np.std(kernel) == pytest.approx(np.sqrt(2.0 / (9 * 128)), rel=0.02)
  assert not np.any(np.asarray(params["conv3"]["bias"]))
  np.testing.assert_array_equal(params["w_skip"], np.ones(3))
