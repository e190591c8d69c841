"""Generalized Gaussian statistics: density, differentiable fit, closed-form KL (docs/method.md §2,
§5).

The zero-mean generalized Gaussian distribution (GGD, Eq. 3–5) with scale α and shape β has the
density `f(x; α, β) = β / (2 α Γ(1/β)) · exp(−(|x|/α)^β)`: β = 2 is a Gaussian, β = 1 a
Laplacian, small β heavy-tailed, large β flat-topped.

All functions are jit-able, vectorised over leading axes, and differentiable. Degenerate data
(constant, all-zero, single-pixel or tiny-valued channels) map to finite parameters through the
clamps below, so values and gradients stay finite:

- β is searched in `[BETA_MIN, BETA_MAX]`; a moment ratio outside the reachable range is clipped
  (a constant or single-pixel channel has ratio 1 and gets β = BETA_MAX; an all-zero channel has
  ratio 0 and gets β = BETA_MIN).
- E[x²] is floored at `M2_MIN` (RMS 1e-9) before the ratio and the log; a channel with a smaller
  RMS is treated as zero-like (its ratio shrinks towards 0).
- α is at least `ALPHA_MIN`.
- In `kl`, the log of the power term `(α₁/α₂)^β₂ Γ((β₂+1)/β₁) / Γ(1/β₁)` is capped at
  `LOG_POWER_MAX`, so extreme scale ratios give a large finite KL rather than inf in float32.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln

BETA_MIN = 0.1
BETA_MAX = 10.0
ALPHA_MIN = 1e-10
LOG_POWER_MAX = 60.0
M2_MIN = 1e-18
_NEWTON_STEPS = 10


def logpdf(x: jax.Array, alpha: jax.Array, beta: jax.Array) -> jax.Array:
  """Log density of GGD(α, β) at x (docs/method.md §2, Eq. 3).

  Args:
    x: values, any shape.
    alpha: scale α > 0, broadcastable against x.
    beta: shape β > 0, broadcastable against x.

  Returns:
    `log f(x; α, β)`, the broadcast shape of the inputs. At x = 0 the gradient with respect to x
    is taken as 0 (the density's cusp for β ≤ 1 has no derivative there).
  """
  t = jnp.abs(x) / alpha
  positive = t > 0
  power = jnp.where(positive, jnp.exp(beta * jnp.log(jnp.where(positive, t, 1.0))), 0.0)
  return jnp.log(beta) - jnp.log(2.0 * alpha) - gammaln(1.0 / beta) - power


def _log_rho(beta: jax.Array) -> jax.Array:
  """log ρ(β) = log[Γ(2/β)² / (Γ(1/β) Γ(3/β))], increasing in β (docs/method.md §2)."""
  return 2.0 * gammaln(2.0 / beta) - gammaln(1.0 / beta) - gammaln(3.0 / beta)


def _dlog_rho_dlog_beta(beta: jax.Array) -> jax.Array:
  """d log ρ / d log β, the Newton slope on u = log β."""
  return (digamma(1.0 / beta) + 3.0 * digamma(3.0 / beta) - 4.0 * digamma(2.0 / beta)) / beta


def _solve_log_beta(log_r: jax.Array) -> jax.Array:
  """log β with log ρ(β) = log_r, for log_r already inside [log ρ(BETA_MIN), log ρ(BETA_MAX)].

  log ρ is increasing and concave in u = log β, so Newton's method on u from β = 1, clipped to
  the search interval, converges monotonically after at most one overshoot (7 steps reach
  float64 precision over the whole interval; `_NEWTON_STEPS` run). The root is found without
  gradient; the returned value is that root, and its gradient the implicit-function derivative
  `1 / (d log ρ / d log β)` at the root.
  """
  lo, hi = math.log(BETA_MIN), math.log(BETA_MAX)
  target = jax.lax.stop_gradient(log_r)

  def newton(_, u):
    beta = jnp.exp(u)
    return jnp.clip(u - (_log_rho(beta) - target) / _dlog_rho_dlog_beta(beta), lo, hi)

  root = jax.lax.fori_loop(0, _NEWTON_STEPS, newton, jnp.zeros_like(target))
  return root + (log_r - target) / _dlog_rho_dlog_beta(jnp.exp(root))


def fit(x: jax.Array, axis: int | tuple[int, ...] = -1) -> tuple[jax.Array, jax.Array]:
  """Moment-matching GGD fit (docs/method.md §2, Eq. 4–5), differentiable in x.

  With `r = (E|x|)² / E[x²]` over `axis` (values as they are, not mean-centred), β solves
  `ρ(β) = Γ(2/β)² / (Γ(1/β) Γ(3/β)) = r` on `[BETA_MIN, BETA_MAX]`, and
  `α = sqrt(E[x²] Γ(1/β) / Γ(3/β))`. See the module docstring for the clamps on degenerate data.

  Args:
    x: samples, e.g. latents `[B, h, w, C]`.
    axis: the axes to reduce, e.g. `(1, 2)` for per-channel statistics of an NHWC batch.

  Returns:
    `(alpha, beta)`, each of x's shape without `axis`, e.g. `[B, C]`.
  """
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # at least float32 (bfloat16, ints)
  m1 = jnp.mean(jnp.abs(x), axis=axis)
  m2 = jnp.mean(jnp.square(x), axis=axis)
  r_min, r_max = (
    math.exp(2.0 * math.lgamma(2.0 / b) - math.lgamma(1.0 / b) - math.lgamma(3.0 / b))
    for b in (BETA_MIN, BETA_MAX)
  )
  m2 = jnp.maximum(m2, M2_MIN)
  r = jnp.clip(jnp.square(m1) / m2, r_min, r_max)
  log_beta = _solve_log_beta(jnp.log(r))
  beta = jnp.exp(log_beta)
  log_alpha = 0.5 * (jnp.log(m2) + gammaln(1.0 / beta) - gammaln(3.0 / beta))
  alpha = jnp.maximum(jnp.exp(log_alpha), ALPHA_MIN)
  return alpha, beta


def kl(a1: jax.Array, b1: jax.Array, a2: jax.Array, b2: jax.Array) -> jax.Array:
  """KL(GGD(α₁, β₁) ‖ GGD(α₂, β₂)) in closed form (docs/method.md §5, Eq. 13).

  `KL = ln(β₁ / (2α₁Γ(1/β₁))) − ln(β₂ / (2α₂Γ(1/β₂))) + (α₁/α₂)^β₂ Γ((β₂+1)/β₁) / Γ(1/β₁) − 1/β₁`.
  Parameters are clamped to the range `fit` returns (α ≥ ALPHA_MIN, β in [BETA_MIN, BETA_MAX]),
  the power term's log is capped at LOG_POWER_MAX (module docstring), and float rounding below
  0 is clipped to 0. Equal parameters give exactly 0.

  Args:
    a1, b1: scale and shape of the first distribution, any broadcastable shapes.
    a2, b2: scale and shape of the second distribution.

  Returns:
    The KL divergence in nats, the broadcast shape of the inputs; ≥ 0, and 0 where equal.
  """
  a1 = jnp.maximum(a1, ALPHA_MIN)
  a2 = jnp.maximum(a2, ALPHA_MIN)
  b1 = jnp.clip(b1, BETA_MIN, BETA_MAX)
  b2 = jnp.clip(b2, BETA_MIN, BETA_MAX)
  s1 = 1.0 / b1
  log_scale = jnp.log(a1 / a2)
  log_norm_ratio = jnp.log(b1 / b2) - log_scale - (gammaln(s1) - gammaln(1.0 / b2))
  # Γ((β₂+1)/β₁) / Γ(1/β₁) = s₁ Γ(s₁ + β₂/β₁) / Γ(1 + s₁), so the power term minus 1/β₁ is
  # s₁·expm1(e); every piece of it is exactly 0 for equal parameters.
  e = b2 * log_scale + gammaln(s1 + b2 / b1) - gammaln(1.0 + s1)
  power_minus_mean = s1 * jnp.expm1(jnp.minimum(e, LOG_POWER_MAX))
  return jnp.maximum(log_norm_ratio + power_minus_mean, 0.0)
