"""The loss terms of UP-ZeroIR as pure functions (docs/method.md §4–§6).

Images are `[B, H, W, 3]` floats in [0, 1]; every loss is a scalar mean over all its elements
(batch included), as LD-RPS takes means over pixels.
"""

import jax
import jax.numpy as jnp

from upzeroir_jax.models import vgg
from upzeroir_jax.physics import ggd


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean squared error over all elements (docs/method.md §4 Eq. 12, §5 Eq. 14)."""
  return jnp.mean(jnp.square(a - b))


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute error: the "w/o DegLoss" ablation's pixel L1 between ŷ and y (docs/method.md
  §8)."""
  return jnp.mean(jnp.abs(a - b))


def perceptual(vgg_params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
  """MSE between VGG16 relu2_2 features of two images (docs/method.md §4, Perc [LD-RPS VGGLoss]).

  a, b: `[B, H, W, 3]` in [0, 1]. The two images go through VGG in separate calls, so a
  gradient with respect to one of them costs one backward pass, not one over both.
  """
  return mse(vgg.perceptual_features(vgg_params, a), vgg.perceptual_features(vgg_params, b))


def perceptual_to(vgg_params: dict, a: jax.Array, b_feats: jax.Array) -> jax.Array:
  """`perceptual` against precomputed relu2_2 features of the second image (docs/method.md §5)."""
  return mse(vgg.perceptual_features(vgg_params, a), b_feats)


def bce_with_logits(logits: jax.Array, real: bool) -> jax.Array:
  """Binary cross-entropy of sigmoid(logits) against all-real (1) or all-fake (0) labels.

  docs/method.md §4 (LD-RPS GANLoss with `nn.BCELoss` after a sigmoid), in the stable logit form:
  real: mean(softplus(−l)) = −mean(log σ(l)); fake: mean(softplus(l)) = −mean(log(1 − σ(l))).
  """
  return jnp.mean(jax.nn.softplus(-logits if real else logits))


def damp(x: jax.Array, threshold: float | jax.Array, factor: float | jax.Array) -> jax.Array:
  """Perceptual damping of docs/method.md §4 [LD-RPS dynamic_clip]: `x if x <= threshold else
  factor·x`."""
  return jnp.where(x <= threshold, x, factor * x)


def deg_loss(z_hat: jax.Array, alpha_y: jax.Array, beta_y: jax.Array) -> jax.Array:
  """Degradation alignment loss DegLoss (docs/method.md §5, Eq. 13).

  Per latent channel GGD fit of z_ŷ = E(ŷ) against the fixed fit (α_y, β_y) of z_y = E(y);
  the mean over channels (and batch) of KL(GGD(z_ŷ) ‖ GGD(z_y)).

  Args:
    z_hat: latents of ŷ, `[B, h, w, C]`.
    alpha_y, beta_y: `[B, C]` (or broadcastable), from `ggd.fit(E(y), axis=(1, 2))`.
  """
  alpha, beta = ggd.fit(z_hat, axis=(1, 2))
  return jnp.mean(ggd.kl(alpha, beta, alpha_y, beta_y))


def exposure(x: jax.Array, patch: int | jax.Array = 32, target: float = 0.5) -> jax.Array:
  """Exposure loss L_exp(patch, target) of docs/method.md §6 (Eq. 15, [LD-RPS L_exp]).

  The RGB mean image is average-pooled over non-overlapping `patch`×`patch` windows (trailing
  rows/columns that do not fill a window are dropped, as `nn.AvgPool2d`), and the squared
  distance of the window means to `target` is averaged. Images smaller than one window are
  pooled as one window.

  `patch` may be a traced int32 scalar (it differs per task and is carried per image under
  `vmap`): the pooling is two matrix products with 0/1 window matrices `[H, H]` and `[W, W]`
  whose rows past the last full window are empty and masked out of the mean.
  """
  b, h, w, _ = x.shape
  patch = jnp.asarray(patch, jnp.int32)
  rows, n_rows = _windows(h, patch)
  cols, n_cols = _windows(w, patch)
  m = jnp.einsum("ki,bij,lj->bkl", rows, jnp.mean(x, axis=-1), cols,
                 precision=jax.lax.Precision.HIGHEST)
  valid = (jnp.arange(h)[:, None] < n_rows) & (jnp.arange(w)[None, :] < n_cols)
  err = jnp.where(valid, jnp.square(m - target), 0.0)
  return jnp.sum(err) / (b * n_rows * n_cols).astype(x.dtype)


def _windows(size: int, patch: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Averaging matrix `[size, size]` of the windows of min(patch, size) along one axis (row k
  averages window k; rows from the window count on are 0) and the window count."""
  p = jnp.minimum(patch, size)
  count = size // p
  i = jnp.arange(size)
  member = (i[None, :] // p == jnp.arange(size)[:, None]) & (i[None, :] < count * p)
  return member.astype(jnp.float32) / p.astype(jnp.float32), count


def color(x: jax.Array) -> jax.Array:
  """Colour-constancy loss L_color of docs/method.md §6 (Eq. 15, [LD-RPS L_color]).

  With channel means μ_r, μ_g, μ_b and D_pq = (μ_p − μ_q)²: sqrt(D_rg² + D_rb² + D_gb²),
  averaged over the batch. The square root has gradient 0 where its argument is 0 (grey
  images), instead of NaN.
  """
  mu = jnp.mean(x, axis=(1, 2))
  d = jnp.square(mu[:, [0, 0, 2]] - mu[:, [1, 2, 1]])
  s = jnp.sum(jnp.square(d), axis=-1)
  positive = s > 0
  return jnp.mean(jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0))


def quality(x: jax.Array, w_exp: float | jax.Array, w_col: float | jax.Array,
            patch: int | jax.Array = 32, target: float = 0.5) -> jax.Array:
  """Quality term Q = w_exp·L_exp + w_col·L_color of the restored image (docs/method.md §6, Eq.
  15)."""
  return w_exp * exposure(x, patch, target) + w_col * color(x)
