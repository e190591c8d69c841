"""The sampler's state pytree and its initialisation (docs/method.md §3–§5).

Everything one image's restoration carries from step to step is one `SamplerState`: the
latent, the latest ẑ0 / x̂0, the PRNG key, PCDM and both discriminators with their Adam states,
the observation (y and what is computed from it once: E(y), its GGD fit, the GGD statistics and
VGG features of y), the loss weights, and the per-step trace. `init` builds it; `step.step` maps
a state to the next one. A batch of images is a `jax.vmap` over states (each image has its own
PCDM).

Every sampler function takes `(state, models, config, ...)`: the state it advances, the
networks (`sampler.models.Models`, traced), the static settings, then what is particular to it.

Everything that differs between the task presets lives in the state as traced scalars
(`LossWeights`: the loss weights, the effective guidance scale, both discriminator learning
rates, the exposure patch and the stage-3 boundary) rather than being read from the static
config inside the step, so presets (and guidance-scale sweeps) share one compiled function and
a batch may mix tasks.

Trace [ours]: `trace` is a dict of arrays `[trace_len]` (`TRACE_KEYS`); step number n (counting
every step taken, restarts included) writes row n, rows past the end are dropped. Unwritten rows
hold t = −1 and zeros.
"""

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from upzeroir_jax import config as config_lib
from upzeroir_jax.models import pcdm, vgg
from upzeroir_jax.physics import ggd
from upzeroir_jax.sampler import models as models_lib

TRACE_KEYS = (
  "t",           # timestep of the step.
  "stage",       # 1, 2 or 3 (docs/method.md §3 table).
  "pcdm_loss",   # L_PCDM (Eq. 12), before the PCDM update, with the damped perceptual term.
  "pcdm_mse", "pcdm_per", "pcdm_adv",  # its weighted terms.
  "disc_loss",   # BCE of the PCDM discriminator (real y, fake ŷ), before its update.
  "deg", "mse", "per", "adv",  # weighted terms of the image distance D (Eq. 14).
  "distance",    # D(PCDM(x̂0), y) = deg + mse + per + adv (0 in stage 1).
  "quality",     # the weighted quality term Q(x̂0) (Eq. 15; 0 before stage 3).
  "grad_norm",   # ‖∇ẑ0 (D + Q)‖₂ before the scale s.
)

@flax.struct.dataclass
class LossWeights:
  """The per-task settings as traced scalars (docs/method.md §4–§6): loss weights, the effective
  guidance scale, the discriminators' Adam learning rates (float32), the exposure patch and the
  stage-3 boundary (int32)."""

  pcdm_w_mse: jax.Array
  pcdm_w_per: jax.Array
  pcdm_w_adv: jax.Array
  lambda_deg: jax.Array
  lambda_mse: jax.Array
  lambda_per: jax.Array
  lambda_adv: jax.Array
  w_exp: jax.Array
  w_col: jax.Array
  guidance_scale: jax.Array
  disc_lr: jax.Array
  adv_disc_lr: jax.Array
  exp_patch: jax.Array
  stage3_t: jax.Array


WEIGHT_FIELDS = tuple(f.name for f in dataclasses.fields(LossWeights))
_INT_FIELDS = ("exp_patch", "stage3_t")


def loss_weights(config: config_lib.RestoreConfig, num_pixels: int) -> LossWeights:
  """The per-task settings of `config`, with s scaled to the model grid (docs/method.md §3,
  s·N/N_ref [ours]).

  num_pixels: N = H·W of the model-grid image. With `config.guidance_ref_pixels` = 0 the scale
  is used as given.
  """
  values = {name: getattr(config, name) for name in WEIGHT_FIELDS}
  if config.guidance_ref_pixels:
    values["guidance_scale"] *= num_pixels / config.guidance_ref_pixels
  return LossWeights(**{k: jnp.asarray(v, jnp.int32 if k in _INT_FIELDS else jnp.float32)
                        for k, v in values.items()})


def weightless(config: config_lib.RestoreConfig) -> config_lib.RestoreConfig:
  """`config` with the fields carried by `LossWeights` reset to their defaults.

  The static part of a configuration: two configs with the same `weightless` form share a
  compiled sampler.
  """
  default = config_lib.RestoreConfig()
  return config.replace(task=default.task,
                        **{name: getattr(default, name) for name in WEIGHT_FIELDS})


@flax.struct.dataclass
class Observation:
  """The degraded input and what the sampler computes from it once (docs/method.md §4–§5).

  Attributes (for a model grid of H×W pixels, latent h×w×C):
    y: the degraded image `[1, H, W, 3]` in [0, 1].
    zy: E(y) `[1, h, w, C]`; zy_alpha, zy_beta: its per-channel GGD fit `[1, C]` (§5).
    y_stats: log α, log β of the RGB GGD fit of y `[1, 6]` (PCDM conditioning, §4).
    y_feats: VGG16 relu2_2 features of y `[1, H/2, W/2, 128]` (Perc(ŷ, y), §5).
  """

  y: jax.Array
  zy: jax.Array
  zy_alpha: jax.Array
  zy_beta: jax.Array
  y_stats: jax.Array
  y_feats: jax.Array


def observe(models: models_lib.Models, y: jax.Array) -> Observation:
  """The `Observation` of y `[1, H, W, 3]` (on the model grid, in [0, 1])."""
  zy = models.backbone.encode(y).astype(jnp.float32)
  zy_alpha, zy_beta = ggd.fit(zy, axis=(1, 2))
  return Observation(y=y, zy=zy, zy_alpha=zy_alpha, zy_beta=zy_beta,
                     y_stats=pcdm.image_stats(y),
                     y_feats=vgg.perceptual_features(models.vgg_params, y))


@flax.struct.dataclass
class SamplerState:
  """One image's restoration state (docs/method.md §3–§5). Shapes for a model grid of H×W pixels.

  Attributes:
    z: z_t for the next step, `[1, h, w, C]` (h = H / latent_factor).
    i: int32 index of the next step into the timesteps array.
    n: int32 number of steps taken (restarts included); the trace row of the next step.
    z0: latest ẑ0 `[1, h, w, C]`.
    x0: latest decoded x̂0 `[1, H, W, 3]` (not clipped).
    key: PRNG key.
    pcdm, pcdm_opt: degradation-model params and Adam state (docs/method.md §4).
    disc, disc_opt: discriminator telling y (real) from ŷ (fake) and its Adam state (§4).
    disc2, disc2_opt: discriminator telling x̂0 − ŷ (real) from x̂0 − y (fake) (§5, Adv).
    obs: the `Observation` (y and what is derived from it; never changes).
    weights: `LossWeights`.
    trace: dict of `[trace_len]` arrays, keys `TRACE_KEYS`.
  """

  z: jax.Array
  i: jax.Array
  n: jax.Array
  z0: jax.Array
  x0: jax.Array
  key: jax.Array
  pcdm: Any
  pcdm_opt: Any
  disc: Any
  disc_opt: Any
  disc2: Any
  disc2_opt: Any
  obs: Observation
  weights: LossWeights
  trace: dict[str, jax.Array]


def optimizers(config: config_lib.RestoreConfig, weights: LossWeights
               ) -> tuple[optax.GradientTransformation, ...]:
  """Adam for PCDM (lr `config.pcdm_lr`), the PCDM discriminator (`weights.disc_lr`) and the Adv
  discriminator (`weights.adv_disc_lr`) (docs/method.md §4–§5). The discriminators' rates are
  traced scalars; Adam's state does not depend on the rate."""
  return (optax.adam(config.pcdm_lr), optax.adam(weights.disc_lr),
          optax.adam(weights.adv_disc_lr))


def degradation_net(config: config_lib.RestoreConfig):
  """The PCDM module (or its ResBlocks ablation) that `config` selects (docs/method.md §4, §8)."""
  return pcdm.make(config.pcdm_variant, config.pcdm_features, config.leaky_slope)


def discriminator(config: config_lib.RestoreConfig) -> pcdm.Discriminator:
  """The discriminator module of `config` (docs/method.md §4); both discriminators share it."""
  return pcdm.Discriminator(features=config.disc_features, slope=config.leaky_slope)


def empty_trace(length: int) -> dict[str, jax.Array]:
  """A trace of `length` unwritten rows (t = −1, zeros elsewhere)."""
  trace = {k: jnp.zeros((length,), jnp.float32) for k in TRACE_KEYS}
  trace["t"] = jnp.full((length,), -1, jnp.int32)
  trace["stage"] = jnp.zeros((length,), jnp.int32)
  return trace


def trace_rows(info: dict[str, Any]) -> dict[str, list]:
  """The written rows of one image's trace (`info` of `restore`, `[trace_len]` per key) as
  JSON-ready lists, one entry per step taken: ints for t and stage, floats to 4 significant
  digits elsewhere (what a sidecar records and a report plots). Empty when `info` has no
  trace."""
  if "t" not in info:
    return {}
  written = np.asarray(info["t"]) >= 0
  return {k: [int(v) if k in ("t", "stage") else float(f"{v:.4g}")
              for v in np.asarray(info[k])[written]] for k in TRACE_KEYS if k in info}


def init(models: models_lib.Models, config: config_lib.RestoreConfig, y: jax.Array,
         key: jax.Array, *, weights: LossWeights | None = None,
         trace_len: int | None = None) -> SamplerState:
  """The state before the first reverse step (docs/method.md §3): z_T ~ N(0, I), fresh PCDM and
  discriminators (Kaiming init, re-initialised per image [LD-RPS]), the observation of y.

  Args:
    models: the networks (backbone, vgg_params).
    config: the settings (static).
    y: the degraded image on the model grid, `[1, H, W, 3]` in [0, 1].
    key: PRNG key; split into z_T noise, PCDM, both discriminators and the running key.
    weights: the per-task settings, possibly traced (default: `loss_weights(config, H·W)`).
    trace_len: rows of the trace (default `config.steps`; longer for restarts).

  Returns:
    The `SamplerState` with i = n = 0.
  """
  if weights is None:
    weights = loss_weights(config, y.shape[1] * y.shape[2])
  k_z, k_net, k_d, k_d2, k_run = jax.random.split(key, 5)
  obs = observe(models, y)
  net, disc = degradation_net(config), discriminator(config)
  pcdm_tx, disc_tx, disc2_tx = optimizers(config, weights)
  net_params = pcdm.init(net, k_net)
  d_params, d2_params = pcdm.init(disc, k_d), pcdm.init(disc, k_d2)
  z = jax.random.normal(k_z, obs.zy.shape, jnp.float32)
  return SamplerState(
    z=z,
    i=jnp.zeros((), jnp.int32),
    n=jnp.zeros((), jnp.int32),
    z0=jnp.zeros_like(z),
    x0=jnp.zeros_like(y, jnp.float32),
    key=k_run,
    pcdm=net_params,
    pcdm_opt=pcdm_tx.init(net_params),
    disc=d_params,
    disc_opt=disc_tx.init(d_params),
    disc2=d2_params,
    disc2_opt=disc2_tx.init(d2_params),
    obs=obs,
    weights=weights,
    trace=empty_trace(config.steps if trace_len is None else trace_len),
  )
