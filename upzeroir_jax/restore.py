"""`restore`: zero-shot restoration of one image or a batch (docs/method.md §3–§7).

`restore(models, y, key, config)` validates the input on the host, then runs one jit-compiled
function: per image, `sampler.state.init` and either the fixed pass (`lax.scan` of
`sampler.step`, `config.dqr` False) or the dynamic quality refinement loop
(`sampler.dqr.run`, `config.dqr` True). A batch `[B, H, W, 3]` is a `jax.vmap` over the
per-image states, each image with its own PCDM and key; it equals B single calls with the same
keys.

`Models` (the networks: backbone, VGG16 params, DQR scorer) is defined in `sampler/models.py`
and is importable from here, beside `restore`.

Compilation: the function is compiled once per input shape and per *static* configuration;
the per-task settings (loss weights, guidance scale, discriminator learning rates, exposure
patch, stage-3 boundary) are traced values (`sampler.state.LossWeights`), so the task presets
share one compiled function.

Choices where docs/method.md is silent [ours]:
- One output definition (docs/method.md §7): a pass that runs to its last timestep returns
  x̂0 = D(ẑ0) of its last step, clipped to [0, 1], in the fixed pass and in DQR alike; DQR
  returns the settled check's x̂0 when it stops early, or its best-scored x̂0 (`"best"`).
- Divergence guard (docs/method.md §3): info carries `failure` (`sampler.state.FAILURES` code,
  0 when the image did not fail), `failure_t` and `recoveries` on both paths; a failed image's
  output is its last finite x̂0, and callers must not use it as a restoration.
- Backbone precision / remat: `config.dtype` / `config.remat` reach the backbone through its
  `configure` (models/backbone.py); a backbone without such settings returns itself.
- In the batched fixed pass all images share the step index, so the timestep stays unbatched
  and the stage `lax.cond` keeps skipping the guidance computation in stage 1.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from upzeroir_jax import config as config_lib
from upzeroir_jax.models import schedule as schedule_lib
from upzeroir_jax.sampler import dqr
from upzeroir_jax.sampler import state as state_lib
from upzeroir_jax.sampler import step as step_lib
from upzeroir_jax.sampler.models import Models


class InputError(ValueError):
  """An input `restore` cannot use; the message says what to change."""


class RestoreResult(NamedTuple):
  """`image`: `[H, W, 3]` or `[B, H, W, 3]` float32 in [0, 1] (as y); `info`: dict of arrays,
  the sampler trace (`sampler.state.TRACE_KEYS`, `[N]` or `[B, N]`) and, with DQR, its info."""

  image: jax.Array
  info: dict[str, jax.Array]


def timesteps(models: Models, config: config_lib.RestoreConfig) -> jax.Array:
  """The sampler's descending timesteps `[config.steps]` on the backbone's schedule."""
  return jnp.asarray(schedule_lib.timesteps(models.backbone.schedule, config.steps))


def finish(st: state_lib.SamplerState) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The fixed pass's output, x̂0 of its last step clipped, and its info (trace and guard)."""
  return jnp.clip(st.x0, 0.0, 1.0), {**st.trace, **guard_info(st)}


def finish_dqr(st: state_lib.SamplerState, image: jax.Array, info: dict[str, jax.Array]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DQR's output `image` (`sampler.dqr`) clipped, and its info with the trace and guard."""
  return jnp.clip(image, 0.0, 1.0), {**st.trace, **info, **guard_info(st)}


def guard_info(st: state_lib.SamplerState) -> dict[str, jax.Array]:
  """The divergence guard's info entries of one image (docs/method.md §3)."""
  return {"failure": st.failure, "failure_t": st.failure_t, "recoveries": st.recoveries}


def _reported(st: state_lib.SamplerState, config: config_lib.RestoreConfig,
              on_step: Callable[[Any, Any], None] | None) -> state_lib.SamplerState:
  """`st` after a step; when `on_step` is given, `on_step(index of that step, config.steps)`
  runs on the host (an unordered `jax.debug.callback`: a side effect, never removed)."""
  if on_step is not None:
    jax.debug.callback(on_step, st.i - 1, config.steps)
  return st


def _run_dqr(st: state_lib.SamplerState, models: Models, config: config_lib.RestoreConfig,
             ts: jax.Array, ctx: Any, on_step: Callable[[Any, Any], None] | None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One image's state through the DQR loop (docs/method.md §7)."""
  st, image, info = dqr.run(
      st, models.scorer, config,
      lambda s: _reported(step_lib.step(s, models, config, ts, ctx), config, on_step),
      ts, models.backbone.schedule.alphas_cumprod,
      unet_per_step=models.backbone.passes_per_step(ctx))
  return finish_dqr(st, image, info)


def trace_len(config: config_lib.RestoreConfig) -> int:
  """Rows of the sampler trace: every step of every pass DQR may run."""
  return config.steps * (1 + config.dqr_max_restarts) if config.dqr else config.steps


@functools.partial(jax.jit, static_argnames=("config", "batched", "on_step"))
def _run(models: Models, y: jax.Array, keys: jax.Array, weights: state_lib.LossWeights,
         ctx: Any, config: config_lib.RestoreConfig, batched: bool,
         on_step: Callable[[Any, Any], None] | None = None
         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The compiled restoration: y `[B, 1, H, W, 3]` with keys `[B]` and weights with a leading
  `[B]` axis when batched, else y `[1, H, W, 3]` with one key and unbatched weights."""
  ts = timesteps(models, config)
  rows = trace_len(config)

  def init(yy, key, w):
    return state_lib.init(models, config, yy, key, weights=w, trace_len=rows)

  if config.dqr:
    def one(yy, key, w):
      return _run_dqr(init(yy, key, w), models, config, ts, ctx, on_step)
    return jax.vmap(one)(y, keys, weights) if batched else one(y, keys, weights)

  def step_at(s, t):
    return step_lib.step_at(s, models, config, t, ctx)

  if batched:
    states = jax.vmap(init)(y, keys, weights)
    step_b = jax.vmap(step_at, in_axes=(0, None))
    states, _ = jax.lax.scan(lambda s, t: (_reported(step_b(s, t), config, on_step), None),
                             states, ts)
    return jax.vmap(finish)(states)
  st = init(y, keys, weights)
  st, _ = jax.lax.scan(lambda s, t: (_reported(step_at(s, t), config, on_step), None), st, ts)
  return finish(st)


def _validate(models: Models, y: Any, key: Any, configs: tuple[Any, ...]) -> int:
  """One-line errors for bad input; returns the batch size (0: one image)."""
  for config in configs:
    if not isinstance(config, config_lib.RestoreConfig):
      raise InputError(f"config must be a RestoreConfig, got {type(config).__name__}")
  static = {state_lib.weightless(c) for c in configs}
  if len(static) > 1:
    raise InputError("per-image configs may differ only in their per-task settings "
                     f"({', '.join(state_lib.WEIGHT_FIELDS)}); run the others separately")
  config = configs[0]
  if not hasattr(y, "shape") or not hasattr(y, "dtype"):
    raise InputError(f"y must be an array [H, W, 3] or [B, H, W, 3], got {type(y).__name__}")
  if y.ndim not in (3, 4) or y.shape[-1] != 3:
    raise InputError(f"y must be [H, W, 3] or [B, H, W, 3] RGB, got shape {tuple(y.shape)}")
  if not jnp.issubdtype(y.dtype, jnp.floating):
    raise InputError(f"y must be float in [0, 1], got dtype {y.dtype}; "
                     "use upzeroir_jax.io.read_image or divide uint8 by 255")
  grid = models.backbone.grid_multiple
  h, w = y.shape[-3], y.shape[-2]
  if h % grid or w % grid or h < grid or w < grid:
    raise InputError(f"y is {h}x{w}; height and width must be positive multiples of {grid} "
                     "for this backbone: bring it to the model grid with "
                     "upzeroir_jax.io.to_model_grid")
  if not isinstance(y, jax.core.Tracer):
    lo, hi = float(jnp.min(y)), float(jnp.max(y))
    if not (0.0 <= lo and hi <= 1.0):
      raise InputError(f"y must hold values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
  if config.dqr and models.scorer is None:
    raise InputError("config.dqr is True but models.scorer is None: "
                     "give one (sampler.scorers.arniqa / niqe, or any score(img) -> [B]) "
                     "or set dqr=False")
  batch = y.shape[0] if y.ndim == 4 else 0
  if not hasattr(key, "dtype") or not hasattr(key, "ndim"):
    raise InputError(f"key must be a PRNG key (jax.random.key(seed)), got {type(key).__name__}")
  if len(configs) > 1 and len(configs) != batch:
    raise InputError(f"got {len(configs)} configs for {batch or 'one'} image(s); "
                     "give one config, or one config per image of a batch")
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  key_batch = key.shape[:1] if key.ndim == (1 if typed else 2) else ()
  if key_batch and (not batch or key_batch[0] != batch):
    raise InputError(f"got {key_batch[0]} keys for {batch or 'one'} image(s); "
                     "give one key, or one key per image")
  return batch


def restore(models: Models, y: jax.Array, key: jax.Array, config: config_lib.RestoreConfig,
            *, context: Any = None, on_step: Callable[[Any, Any], None] | None = None
            ) -> RestoreResult:
  """Restores degraded images with UP-ZeroIR (docs/method.md §3–§7).

  Args:
    models: `Models` (backbone, VGG16 params, scorer for DQR).
    y: degraded image `[H, W, 3]` or batch `[B, H, W, 3]`, float in [0, 1], on the model grid
      (height and width multiples of `models.backbone.grid_multiple`; `io.to_model_grid`
      brings images there).
    key: PRNG key. For a batch, one key (image b uses `jax.random.split(key, B)[b]`) or a
      `[B]` batch of keys (image b uses key[b]; then the result equals B single calls).
    config: `RestoreConfig` (hashable; its non-weight fields select the compiled function),
      or for a batch a sequence of B configs, one per image, that differ only in the fields of
      `sampler.state.WEIGHT_FIELDS` (e.g. different task presets in one compiled call).
    context: text conditioning built outside jit (`models.sd.text_context`), or None.
    on_step: None (default: no host synchronisation inside the loop), or a hashable
      `on_step(index, steps)` called on the host after each sampling step (index 0-based, int32
      arrays; once per image of a batch); e.g. `progress.Progress.on_step`. It is part of the
      compiled function, so pass the same object every call, and such a function is not kept
      in JAX's persistent compilation cache.

  Returns:
    `RestoreResult(image, info)`: image shaped like y in [0, 1]; info the sampler trace
    (`sampler.state.TRACE_KEYS`), the divergence guard's `failure`, `failure_t`, `recoveries`
    (docs/method.md §3) and, with DQR, the refinement info (sampler/dqr.py).

  Raises:
    InputError: bad shape, dtype, range, grid size, key or config count, per-image configs
      that differ in more than their weights, or DQR without a scorer.
  """
  configs = tuple(config) if isinstance(config, (list, tuple)) else (config,)
  batch = _validate(models, y, key, configs)
  y = jnp.asarray(y, jnp.float32)
  pixels = y.shape[-3] * y.shape[-2]
  if not batch:
    weights = state_lib.loss_weights(configs[0], pixels)
    image, info = _run(prepared(models, configs[0]), y[None], key, weights, context,
                       state_lib.weightless(configs[0]), False, on_step)
    return RestoreResult(image[0], info)
  per_image = [state_lib.loss_weights(c, pixels) for c in configs]
  weights = jax.tree.map(lambda *w: jnp.broadcast_to(jnp.stack(w), (batch,)), *per_image)
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  keys = key if key.ndim == (1 if typed else 2) else jax.random.split(key, batch)
  return restore_weighted(models, y, keys, weights, configs[0], context=context,
                          on_step=on_step)


def prepared(models: Models, config: config_lib.RestoreConfig) -> Models:
  """`models` with the backbone set to `config`'s precision and remat, the DQR scorer wrapped."""
  models = models.replace(backbone=models.backbone.configure(jnp.dtype(config.dtype),
                                                            config.remat))
  return models.replace(scorer=dqr.wrap(models.scorer)) if config.dqr else models


def restore_weighted(models: Models, y: jax.Array, keys: jax.Array,
                     weights: state_lib.LossWeights, config: config_lib.RestoreConfig, *,
                     context: Any = None, on_step: Callable[[Any, Any], None] | None = None
                     ) -> RestoreResult:
  """`restore` of a batch whose per-image settings are traced arrays: y `[B, H, W, 3]` (checked
  by the caller, e.g. `restore` or the pipeline), keys `[B]` (or raw `[B, 2]`), `weights` a
  `sampler.state.LossWeights` with leading axis B (`state.loss_weights` of each image's
  config, which must share `config`'s `state.weightless` form). Images with different task
  presets thus share one compiled function; the result equals `restore` with one config per
  image."""
  image, info = _run(prepared(models, config), jnp.asarray(y, jnp.float32)[:, None], keys,
                     weights, context, state_lib.weightless(config), True, on_step)
  return RestoreResult(image[:, 0], info)
