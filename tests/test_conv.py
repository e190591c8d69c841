"""`models.conv`: values and gradients against PyTorch's conv2d and XLA's own gradients."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from upzeroir_jax.models import conv as conv_lib
from upzeroir_jax.models import sd_layers

# (kernel h, kernel w, stride, ((top, bottom), (left, right)), H, W)
CASES = [
  (3, 3, (1, 1), ((1, 1), (1, 1)), 9, 7),
  (3, 3, (2, 2), ((1, 1), (1, 1)), 9, 7),
  (1, 1, (1, 1), ((0, 0), (0, 0)), 5, 6),
  (3, 3, (2, 2), ((0, 1), (0, 1)), 8, 8),
  (3, 3, (1, 1), ((0, 0), (0, 0)), 6, 6),
  (3, 2, (1, 2), ((2, 1), (0, 1)), 7, 9),
]


def _inputs(case, seed=0):
  kh, kw, _, _, h, w = case
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, h, w, 4)).astype(np.float32)
  kernel = rng.standard_normal((kh, kw, 4, 5)).astype(np.float32)
  return x, kernel


def _torch_conv_and_grads(x, kernel, stride, padding, g_fn):
  torch = pytest.importorskip("torch")
  tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  tw = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)
  (top, bottom), (left, right) = padding
  y = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (left, right, top, bottom)), tw,
                                 stride=stride)
  g = torch.tensor(g_fn(y.shape[0], y.shape[2], y.shape[3], y.shape[1]).transpose(0, 3, 1, 2))
  y.backward(g)
  return (y.detach().numpy().transpose(0, 2, 3, 1), tx.grad.numpy().transpose(0, 2, 3, 1),
          tw.grad.numpy().transpose(2, 3, 1, 0))


def _cotangent(b, h, w, c):
  return np.random.default_rng(7).standard_normal((b, h, w, c)).astype(np.float32)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}x{c[1]}-s{c[2]}-p{c[3]}")
def test_values_and_gradients_match_torch(case):
  x, kernel = _inputs(case)
  stride, padding = case[2], case[3]
  y_ref, dx_ref, dw_ref = _torch_conv_and_grads(x, kernel, stride, padding, _cotangent)
  y, vjp = jax.vjp(lambda a, w: conv_lib.conv(a, w, stride, padding), x, kernel)
  dx, dw = vjp(jnp.asarray(_cotangent(*y.shape)))
  np.testing.assert_allclose(y, y_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(dx, dx_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(dw, dw_ref, atol=1e-4, rtol=1e-4)


def test_gradients_inside_cond_and_loop_match_xla():
  """The sampler's setting: gradients taken in a `lax.cond` branch inside a `fori_loop`."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(size=(1, 16, 16, 3)), jnp.float32)
  kernels = [jnp.asarray(0.3 * rng.standard_normal((3, 3, a, b)), jnp.float32)
             for a, b in ((3, 8), (8, 8))]

  def descend(conv_fn):
    def loss(ws, a):
      for w in ws:
        a = jax.nn.leaky_relu(conv_fn(a, w), 0.01)
      return jnp.mean(jnp.square(a - 0.5))

    def body(_, carry):
      ws, a = carry
      gw, ga = lax.cond(True, lambda c: jax.grad(loss, argnums=(0, 1))(*c),
                        lambda c: jax.tree.map(jnp.zeros_like, c), (ws, a))
      return [w - 0.1 * g for w, g in zip(ws, gw)], a - 0.1 * ga

    return jax.jit(lambda ws, a: lax.fori_loop(0, 3, body, (ws, a)))(kernels, x)

  ours = descend(lambda a, w: conv_lib.conv(a, w, 1, 1))
  xla = descend(lambda a, w: lax.conv_general_dilated(
    a, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert float(jnp.abs(ours[1] - x).max()) > 1e-4


def test_conv_layer_matches_nn_conv():
  x = jax.random.normal(jax.random.key(2), (2, 10, 10, 3))
  ours = conv_lib.Conv(6, 3, stride=2)
  params = jax.jit(ours.init)(jax.random.key(3), x)
  ref = nn.Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_allclose(jax.jit(ours.apply)(params, x), jax.jit(ref.apply)(params, x),
                             atol=1e-5)


_PATHS = {"cpu": conv_lib._cpu_conv, "tap": conv_lib._tap_conv}


@pytest.mark.parametrize("path", sorted(_PATHS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}x{c[1]}-s{c[2]}-p{c[3]}")
def test_both_gradient_forms_match_torch(case, path):
  """The CPU form and the form other backends use, whatever backend runs the test."""
  x, kernel = _inputs(case)
  stride, padding = case[2], case[3]
  y_ref, dx_ref, dw_ref = _torch_conv_and_grads(x, kernel, stride, padding, _cotangent)
  y, vjp = jax.vjp(lambda a, w: _PATHS[path](a, w, stride, padding), x, kernel)
  dx, dw = vjp(jnp.asarray(_cotangent(*y.shape)))
  np.testing.assert_allclose(y, y_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(dx, dx_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(dw, dw_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", sorted(_PATHS))
def test_per_image_kernels_under_vmap_equal_one_call_per_image(path):
  """Image b with its own kernel (as the sampler's per-image PCDM): the vmapped gradients
  equal those of separate calls."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((3, 1, 10, 10, 4)), jnp.float32)
  kernels = jnp.asarray(rng.standard_normal((3, 3, 3, 4, 6)), jnp.float32)
  stride, padding = (2, 2), ((1, 1), (1, 1))

  def loss(a, w):
    return jnp.sum(jnp.sin(_PATHS[path](a, w, stride, padding)))

  got = jax.vmap(jax.grad(loss, argnums=(0, 1)))(x, kernels)
  for b in range(3):
    want = jax.grad(lambda a, w: jnp.sum(jnp.sin(conv_lib._xla_conv(a, w, stride, padding))),
                    argnums=(0, 1))(x[b], kernels[b])
    for g, w in zip(got, want, strict=True):
      np.testing.assert_allclose(g[b], w, atol=1e-4, rtol=1e-4)


def _conv_windows(hlo_text: str) -> list[tuple[int, ...]]:
  return [tuple(int(v) for v in m.split("x"))
          for m in re.findall(r"convolution\(.*window=\{size=([0-9x]+)", hlo_text)]


def test_vmapped_kernel_gradient_has_no_image_sized_convolution():
  """With per-image kernels under `vmap`, XLA's own kernel gradient is a grouped convolution
  whose window is the image (the form other backends ran slowly); the tap form's convolutions
  all have kernel-sized windows."""
  x = jnp.zeros((4, 1, 16, 16, 8), jnp.float32)
  kernels = jnp.zeros((4, 3, 3, 8, 8), jnp.float32)

  def grads(fn):
    loss = lambda a, w: jnp.sum(fn(a, w, (1, 1), ((1, 1), (1, 1))) ** 2)
    return jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)))).lower(x, kernels).as_text(
      dialect="hlo")

  assert max(max(w) for w in _conv_windows(grads(conv_lib._xla_conv))) == 16
  assert max(max(w) for w in _conv_windows(grads(conv_lib._tap_conv))) == 3


def test_upsample_nearest2x_values_and_gradient():
  """Against numpy's repeat (values) and the 2×2 block sums of the cotangent (gradient, by
  hand), and equal to `jax.image.resize(..., "nearest")`."""
  rng = np.random.default_rng(5)
  x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
  up = conv_lib.upsample_nearest2x(jnp.asarray(x))
  np.testing.assert_array_equal(up, x.repeat(2, axis=1).repeat(2, axis=2))
  np.testing.assert_array_equal(up, jax.image.resize(x, (2, 6, 10, 4), "nearest"))
  g = rng.standard_normal((2, 6, 10, 4)).astype(np.float32)
  (dx,) = jax.vjp(conv_lib.upsample_nearest2x, jnp.asarray(x))[1](jnp.asarray(g))
  want = g[:, 0::2, 0::2] + g[:, 1::2, 0::2] + g[:, 0::2, 1::2] + g[:, 1::2, 1::2]
  np.testing.assert_allclose(dx, want, rtol=1e-6, atol=1e-6)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(conv_lib.upsample_nearest2x(v))))(x))
  assert "scatter" not in jaxpr and "gather" not in jaxpr


def test_vae_upsample_layer_gradient_has_no_scatter():
  """The VAE's upsampling layer (nearest 2×, then its conv): the same values as
  `jax.image.resize` then the conv, and no gather or scatter in its gradient."""
  m = sd_layers.Upsample(4)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 4, 4, 4)), jnp.float32)
  params = m.init(jax.random.key(0), x)
  conv = sd_layers.Conv(4)
  resized = jax.image.resize(x, (1, 8, 8, 4), "nearest")
  np.testing.assert_allclose(m.apply(params, x), conv.apply({"params": params["params"]["conv"]},
                                                            resized), rtol=1e-6, atol=1e-6)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(m.apply(params, v) ** 2)))(x))
  assert "scatter" not in jaxpr and "gather" not in jaxpr
