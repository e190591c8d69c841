"""DDIM on a diffusion model's training schedule, in pure JAX (docs/method.md §3).

A `DDIMSchedule` is the ᾱ table plus the settings of a diffusers `scheduler_config.json`; every
function here mirrors the matching part of diffusers' PyTorch `DDIMScheduler` (`set_timesteps`,
`step`, `add_noise`, `_threshold_sample`) so that a checkpoint's sampler behaves as it does in
diffusers. All functions except `timesteps` are jit-able with a traced timestep `t` (a scalar or
one per batch element) and broadcast over NHWC latents `[B, h, w, C]`.

The ᾱ table is built as diffusers builds it: β in float32, ᾱ = cumprod(1 − β) accumulated in
float64 and rounded to float32 (what torch's CPU `cumprod` does), so the tables agree to float32
rounding (docs/verification.md).
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

_SPACINGS = ("leading", "trailing", "linspace")
_PREDICTIONS = ("epsilon", "v_prediction", "sample")

# diffusers' DDIMScheduler defaults, used for keys a scheduler config leaves out.
_DEFAULTS = {
  "num_train_timesteps": 1000,
  "beta_start": 0.0001,
  "beta_end": 0.02,
  "beta_schedule": "linear",
  "trained_betas": None,
  "clip_sample": True,
  "set_alpha_to_one": True,
  "steps_offset": 0,
  "prediction_type": "epsilon",
  "thresholding": False,
  "dynamic_thresholding_ratio": 0.995,
  "clip_sample_range": 1.0,
  "sample_max_value": 1.0,
  "timestep_spacing": "leading",
  "rescale_betas_zero_snr": False,
}


class ScheduleError(ValueError):
  """A scheduler configuration or a step count the DDIM schedule cannot use."""


@flax.struct.dataclass
class DDIMSchedule:
  """The ᾱ table and settings of a DDIM sampler (diffusers' `DDIMScheduler` config).

  Attributes:
    alphas_cumprod: [T] float32, ᾱ_t for t = 0 … T−1.
    final_alpha_cumprod: scalar ᾱ used for the step past t = 0 (`set_alpha_to_one`: 1.0, else ᾱ_0).
    num_train_timesteps: T.
    steps_offset: added to "leading" timesteps.
    timestep_spacing: "leading", "trailing" or "linspace".
    prediction_type: what the network predicts: "epsilon", "v_prediction" or "sample".
    thresholding: dynamic thresholding of x̂0 (Imagen); takes precedence over `clip_sample`.
    dynamic_thresholding_ratio: quantile of |x̂0| used as the threshold.
    sample_max_value: upper bound of the dynamic threshold.
    threshold_divide: after clamping to ±r, divide by r (diffusers' `DDIMScheduler`, the
      default); False clamps only (the DDIM scheduler LD-RPS bundles; docs/method.md §3).
    clip_sample: clip x̂0 to ±`clip_sample_range` (when not thresholding).
    clip_sample_range: the clip bound.
  """

  alphas_cumprod: jax.Array
  final_alpha_cumprod: jax.Array
  num_train_timesteps: int = flax.struct.field(pytree_node=False, default=1000)
  steps_offset: int = flax.struct.field(pytree_node=False, default=0)
  timestep_spacing: str = flax.struct.field(pytree_node=False, default="leading")
  prediction_type: str = flax.struct.field(pytree_node=False, default="epsilon")
  thresholding: bool = flax.struct.field(pytree_node=False, default=False)
  dynamic_thresholding_ratio: float = flax.struct.field(pytree_node=False, default=0.995)
  sample_max_value: float = flax.struct.field(pytree_node=False, default=1.0)
  threshold_divide: bool = flax.struct.field(pytree_node=False, default=True)
  clip_sample: bool = flax.struct.field(pytree_node=False, default=False)
  clip_sample_range: float = flax.struct.field(pytree_node=False, default=1.0)


def _betas(cfg: dict[str, Any]) -> np.ndarray:
  """β_t in float32 for the config's `beta_schedule` (or its `trained_betas`), as diffusers."""
  n = int(cfg["num_train_timesteps"])
  kind = cfg["beta_schedule"]
  if cfg["trained_betas"] is not None:
    return np.asarray(cfg["trained_betas"], np.float32)
  if kind == "linear":
    return np.linspace(cfg["beta_start"], cfg["beta_end"], n).astype(np.float32)
  if kind == "scaled_linear":
    return np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n).astype(np.float32) ** 2
  if kind == "squaredcos_cap_v2":
    t = np.arange(n + 1, dtype=np.float64) / n
    alpha_bar = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999).astype(np.float32)
  raise ScheduleError(
    f"beta_schedule {kind!r} is not supported; use linear, scaled_linear or squaredcos_cap_v2"
  )


def _cumprod(x: np.ndarray) -> np.ndarray:
  """Cumulative product accumulated in float64, each entry rounded to float32."""
  return np.cumprod(x.astype(np.float64)).astype(np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Betas rescaled so that ᾱ_{T−1} = 0 (Lin et al. 2023, Algorithm 1; diffusers' helper)."""
  sqrt_ab = np.sqrt(_cumprod(np.float32(1) - betas))
  first, last = sqrt_ab[0], sqrt_ab[-1]
  sqrt_ab = (sqrt_ab - last) * (first / (first - last))
  ab = sqrt_ab**2
  alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
  return np.float32(1) - alphas


def from_config(cfg: dict[str, Any]) -> DDIMSchedule:
  """Builds the schedule from a diffusers scheduler config (`scheduler_config.json` keys).

  Keys it leaves out take diffusers' `DDIMScheduler` defaults, exactly as
  `DDIMScheduler.from_config(cfg)` does; unknown keys (`_class_name`, `skip_prk_steps`, …) are
  ignored, so the PNDM config shipped with SD checkpoints works unchanged.

  Args:
    cfg: the scheduler config as a dict.

  Returns:
    The DDIM schedule (docs/method.md §3: T = 1000 training steps for SD).
  """
  merged = {**_DEFAULTS, **{k: v for k, v in cfg.items() if k in _DEFAULTS}}
  if merged["timestep_spacing"] not in _SPACINGS:
    raise ScheduleError(
      f"timestep_spacing {merged['timestep_spacing']!r} is not supported; use one of {_SPACINGS}"
    )
  if merged["prediction_type"] not in _PREDICTIONS:
    raise ScheduleError(
      f"prediction_type {merged['prediction_type']!r} is not supported; use one of {_PREDICTIONS}"
    )
  betas = _betas(merged)
  if merged["rescale_betas_zero_snr"]:
    betas = _rescale_zero_terminal_snr(betas)
  alphas_cumprod = _cumprod(np.float32(1) - betas)
  final = 1.0 if merged["set_alpha_to_one"] else alphas_cumprod[0]
  return DDIMSchedule(
    alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
    final_alpha_cumprod=jnp.asarray(final, jnp.float32),
    num_train_timesteps=len(betas),
    steps_offset=int(merged["steps_offset"]),
    timestep_spacing=merged["timestep_spacing"],
    prediction_type=merged["prediction_type"],
    thresholding=bool(merged["thresholding"]),
    dynamic_thresholding_ratio=float(merged["dynamic_thresholding_ratio"]),
    sample_max_value=float(merged["sample_max_value"]),
    clip_sample=bool(merged["clip_sample"]),
    clip_sample_range=float(merged["clip_sample_range"]),
  )


def sd_default(prediction_type: str = "epsilon") -> DDIMSchedule:
  """The Stable Diffusion 1.x / 2.x schedule: scaled_linear β from 0.00085 to 0.012, T = 1000.

  `steps_offset` 1, `set_alpha_to_one` False, no clipping (the scheduler config SD ships).
  `prediction_type` is "epsilon" (SD 1.x, SD-2.1-base) or "v_prediction" (SD-2.1 768).
  """
  return from_config(
    {
      "beta_schedule": "scaled_linear",
      "beta_start": 0.00085,
      "beta_end": 0.012,
      "num_train_timesteps": 1000,
      "steps_offset": 1,
      "set_alpha_to_one": False,
      "clip_sample": False,
      "prediction_type": prediction_type,
    }
  )


def timesteps(s: DDIMSchedule, num_steps: int) -> np.ndarray:
  """The `num_steps` sampling timesteps, descending, as diffusers' `set_timesteps` spaces them.

  Host side (the result is static for the sampler's scan).

  Returns:
    int32 [num_steps].
  """
  n_train = s.num_train_timesteps
  if not 1 <= num_steps <= n_train:
    raise ScheduleError(f"num_steps must be in [1, {n_train}], got {num_steps}")
  if s.timestep_spacing == "linspace":
    ts = np.linspace(0, n_train - 1, num_steps).round()[::-1]
  elif s.timestep_spacing == "leading":
    ts = (np.arange(num_steps) * (n_train // num_steps)).round()[::-1] + s.steps_offset
  else:
    ts = np.round(np.arange(n_train, 0, -n_train / num_steps)) - 1
  return ts.astype(np.int32)


def prev_timestep(s: DDIMSchedule, t: jax.Array, num_steps: int) -> jax.Array:
  """The timestep DDIM steps to from t: t − T // num_steps (diffusers' DDIM rule, any spacing)."""
  return t - s.num_train_timesteps // num_steps


def _expand(a: jax.Array, x: jax.Array) -> jax.Array:
  """Right-pads a scalar or per-batch [B] array with unit axes to broadcast against x [B, …]."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) if a.ndim else a


def alpha_at(s: DDIMSchedule, t: jax.Array) -> jax.Array:
  """ᾱ_t for integer t (scalar or [B]); t < 0 gives `final_alpha_cumprod`."""
  t = jnp.asarray(t)
  inside = s.alphas_cumprod[jnp.clip(t, 0, s.num_train_timesteps - 1)]
  return jnp.where(t >= 0, inside, s.final_alpha_cumprod)


def predict(
  s: DDIMSchedule, sample: jax.Array, model_output: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """x̂0 and ε̂ from the network output at timestep t (docs/method.md §3, the ẑ0 formula).

  epsilon: x̂0 = (x_t − sqrt(1−ᾱ_t)·ε) / sqrt(ᾱ_t); v_prediction: x̂0 = sqrt(ᾱ_t)·x_t −
  sqrt(1−ᾱ_t)·v, ε̂ = sqrt(ᾱ_t)·v + sqrt(1−ᾱ_t)·x_t; sample: x̂0 is the output.

  Args:
    s: the schedule (its `prediction_type` selects the formula).
    sample: x_t, [B, h, w, C].
    model_output: network output, same shape.
    t: timestep, scalar or [B].

  Returns:
    (x̂0, ε̂), each shaped like `sample`, without thresholding.
  """
  a = _expand(alpha_at(s, t), sample)
  b = 1 - a
  if s.prediction_type == "epsilon":
    return (sample - b**0.5 * model_output) / a**0.5, model_output
  if s.prediction_type == "v_prediction":
    return a**0.5 * sample - b**0.5 * model_output, a**0.5 * model_output + b**0.5 * sample
  return model_output, (sample - a**0.5 * model_output) / b**0.5


def threshold(s: DDIMSchedule, x0: jax.Array) -> jax.Array:
  """Dynamic thresholding (or plain clipping) of x̂0 as the schedule's settings ask.

  Thresholding: per batch element, r = quantile(|x̂0|, `dynamic_thresholding_ratio`) over all
  its values, clamped to [1, `sample_max_value`]; x̂0 ← clip(x̂0, −r, r) / r, or without the
  division when `threshold_divide` is False (computed in float32). Otherwise with
  `clip_sample`, x̂0 ← clip(x̂0, ±`clip_sample_range`). Else unchanged.

  Args:
    s: the schedule.
    x0: [B, h, w, C].

  Returns:
    x̂0 with the same shape and dtype.
  """
  if s.thresholding:
    flat = x0.astype(jnp.float32).reshape(x0.shape[0], -1)
    r = jnp.quantile(jnp.abs(flat), s.dynamic_thresholding_ratio, axis=1, keepdims=True)
    r = jnp.clip(r, 1.0, s.sample_max_value)
    out = jnp.clip(flat, -r, r)
    if s.threshold_divide:
      out = out / r
    return out.reshape(x0.shape).astype(x0.dtype)
  if s.clip_sample:
    return jnp.clip(x0, -s.clip_sample_range, s.clip_sample_range)
  return x0


def step(
  s: DDIMSchedule,
  model_output: jax.Array,
  t: jax.Array,
  prev_t: jax.Array,
  sample: jax.Array,
  eta: float | jax.Array = 0.0,
  key: jax.Array | None = None,
  *,
  noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """One DDIM reverse step x_t → x_{prev_t} (diffusers' `DDIMScheduler.step`; docs/method.md §3).

  x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1 − ᾱ_prev − σ²)·ε̂ + σ·n, with
  σ = η·sqrt((1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)) and n = `noise` or `jax.random.normal(key, x.shape)`;
  x̂0 is thresholded/clipped per the schedule, ε̂ is not re-derived from it.

  Args:
    s: the schedule.
    model_output: network output (ε, v or x0 per `prediction_type`), [B, h, w, C].
    t: current timestep (scalar or [B]).
    prev_t: the timestep stepped to (`prev_timestep`); negative means past t = 0.
    sample: x_t, [B, h, w, C].
    eta: η ≥ 0; η = 0 is deterministic DDIM.
    key: PRNG key for the η > 0 noise; one of `key`, `noise` is required when η is a positive
      Python number.
    noise: the standard normal n itself, shaped like `sample` (instead of drawing it from `key`).

  Returns:
    (x_prev, x̂0), each shaped like `sample`.
  """
  if key is not None and noise is None:
    noise = jax.random.normal(key, sample.shape, sample.dtype)
  if noise is None and not isinstance(eta, jax.Array) and eta > 0:
    raise ScheduleError("DDIM with eta > 0 needs noise: pass key=... (or noise=...)")
  a_t = _expand(alpha_at(s, t), sample)
  a_prev = _expand(alpha_at(s, prev_t), sample)
  x0, eps = predict(s, sample, model_output, t)
  x0 = threshold(s, x0)
  variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
  std = eta * variance**0.5
  prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
  if noise is not None:
    prev = prev + std * noise
  return prev, x0


def add_noise(s: DDIMSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """The forward process q(x_t | x_0): sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·noise (t scalar or [B])."""
  a = _expand(alpha_at(s, t), x0)
  return a**0.5 * x0 + (1 - a) ** 0.5 * noise
