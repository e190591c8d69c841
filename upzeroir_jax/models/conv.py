"""2-D convolution whose gradients take the forms XLA:CPU runs fast.

The sampler's step runs inside `lax.cond` and `while_loop` bodies. There, on XLA:CPU, the
gradients XLA derives for `lax.conv_general_dilated` miss the CPU's fast convolution library:
- the input gradient is a convolution with a reversed kernel in O-I order, which the library
  fusion does not take inside such bodies;
- the kernel gradient runs much slower than outside a loop body.
(Timings in docs/performance.md.)

`conv` computes the same convolution with its own VJP: the input gradient is a forward
convolution of the cotangent with the spatially flipped, in/out-swapped kernel (stride 1), or
the transpose of the patch matmul (strided); the kernel gradient is patchesᵀ · cotangent, one
matmul. On other backends `conv` is `lax.conv_general_dilated` with XLA's input
gradient (the patch matrix would cost memory and bandwidth there) and the kernel gradient as one
matmul per kernel tap. The sampler `vmap`s per-image PCDM and discriminator kernels: XLA's
kernel gradient then becomes a grouped convolution whose window is the whole image, the tap
matmuls a batched matmul.

`Conv` is a Flax layer on `conv` (same parameters as `nn.Conv`: `kernel` `[kh, kw, Cin, Cout]`,
`bias` `[Cout]`). `upsample_nearest2x` is the VAE's nearest 2× upsampling, whose gradient is a
reshape and a sum rather than a scatter-add.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Padding = tuple[tuple[int, int], tuple[int, int]]
_DIMS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: tuple[int, int],
              padding: Padding) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, stride, padding, dimension_numbers=_DIMS)


def _taps(x: jax.Array, size: tuple[int, int], stride: tuple[int, int],
          padding: Padding) -> list[jax.Array]:
  """For each kernel tap (i, j), in that order, the input pixel it meets at every output
  position: kh·kw arrays `[B, Ho, Wo, C]`."""
  (kh, kw), (sh, sw) = size, stride
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  return [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
          for i in range(kh) for j in range(kw)]


def _patches(x: jax.Array, size: tuple[int, int], stride: tuple[int, int],
             padding: Padding) -> jax.Array:
  """`[B, Ho, Wo, kh·kw·C]`: the input window of every output position, (i, j, c) order."""
  return jnp.concatenate(_taps(x, size, stride, padding), axis=-1)


def _conv_fwd(x, kernel, stride, padding):
  return _xla_conv(x, kernel, stride, padding), (x, kernel)


def _with_backward(bwd):
  """XLA's convolution `(x, kernel, stride, padding)` with the backward pass `bwd`."""
  fn = jax.custom_vjp(_xla_conv, nondiff_argnums=(2, 3))
  fn.defvjp(_conv_fwd, bwd)
  return fn


def _cpu_conv_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  cols, cols_vjp = jax.vjp(lambda v: _patches(v, (kh, kw), stride, padding), x)
  if stride == (1, 1):
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    back = ((kh - 1 - padding[0][0], kh - 1 - padding[0][1]),
            (kw - 1 - padding[1][0], kw - 1 - padding[1][1]))
    dx = _xla_conv(g, flipped, (1, 1), back)
  else:
    (dx,) = cols_vjp(g @ kernel.reshape(kh * kw * cin, cout).T)
  dw = cols.reshape(-1, kh * kw * cin).T @ g.reshape(-1, cout)
  return dx, dw.reshape(kernel.shape).astype(kernel.dtype)


_cpu_conv = _with_backward(_cpu_conv_bwd)


def _tap_conv_bwd(stride, padding, residuals, g):
  """Input gradient: XLA's (a convolution of g with the flipped kernel, window kh×kw). Kernel
  gradient: per tap (i, j), window(x)ᵀ·g, a matmul; under `vmap` with per-image kernels a
  batched matmul, where XLA's own kernel gradient would be a grouped convolution with an
  image-sized window."""
  x, kernel = residuals
  (dx,) = jax.vjp(lambda v: _xla_conv(v, kernel, stride, padding), x)[1](g)
  taps = [jnp.einsum("nhwc,nhwo->co", tap, g, preferred_element_type=jnp.float32)
          for tap in _taps(x, kernel.shape[:2], stride, padding)]
  dw = jnp.stack(taps).reshape(kernel.shape)
  return dx, dw.astype(kernel.dtype)


_tap_conv = _with_backward(_tap_conv_bwd)


def conv(x: jax.Array, kernel: jax.Array, stride: int | Sequence[int] = 1,
         padding: int | Padding = 0) -> jax.Array:
  """A 2-D convolution, NHWC input and HWIO kernel (cross-correlation, as `nn.Conv`).

  Args:
    x: `[B, H, W, Cin]`.
    kernel: `[kh, kw, Cin, Cout]`.
    stride: one stride for both axes, or (sh, sw).
    padding: zero padding, the same on every side, or ((top, bottom), (left, right)).

  Returns:
    `[B, Ho, Wo, Cout]`; on a CPU backend with the gradients of the module docstring.
  """
  stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if jax.default_backend() == "cpu":
    return _cpu_conv(x, kernel, stride, padding)
  return _tap_conv(x, kernel, stride, padding)


class Conv(nn.Module):
  """A k×k convolution with zero padding k // 2 (and a bias), on `conv`.

  Attributes:
    features: output channels.
    kernel: kernel side k.
    stride: stride of both axes.
    kernel_init: initializer of the `[k, k, Cin, features]` kernel.
  """

  features: int
  kernel: int = 3
  stride: int = 1
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel
    w = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    return conv(x, w.astype(x.dtype), self.stride, k // 2) + b.astype(x.dtype)


def upsample_nearest2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2× upsampling `[B, H, W, C] -> [B, 2H, 2W, C]` (each pixel repeated in a
  2×2 block) as a broadcast and a reshape, so its gradient is a reshape and a sum over each
  block (`jax.image.resize`'s is a scatter-add)."""
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
