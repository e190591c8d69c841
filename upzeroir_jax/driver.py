"""The sampling driver: restoration as compiled chunks of k steps over B slots, driven by a
host loop that refills a finished slot with the next image of a queue (docs/api.md, "Driver").

Three programs, each jit-compiled once per static configuration, image shape and slot count,
and none with a host callback (so JAX's persistent compilation cache keeps every one):

- `init`: one image's sampler state (`sampler.state.init`) and its DQR bookkeeping
  (`sampler.dqr.init`), written into slot b of the batch (b is traced; the batch is donated);
- `chunk`: every live slot advances k steps (`sampler.step.step`, guarded by the slot's
  `done` flag) and, with DQR, takes one quality check (`sampler.dqr.check`, docs/method.md §7):
  k = `config.dqr_every` with DQR, `chunk_steps` for the fixed schedule (a last short chunk is
  guarded, so a pass never takes a step past its grid);
- `finish`: slot b's output and info, the record `restore.restore` returns for that image.

The host loop (`restore_queue`) fills the slots, calls `chunk` until a slot is done (settled,
restart cap, end of schedule, diverged), then finishes it, hands its result to the caller, and
only then writes the next image of the queue into that slot. A run of N images thus costs
about Σ steps_i / B chunk-steps, not the sum over batches of each batch's slowest image.

Slots are mapped, not vmapped (`lax.map` over the slot axis): every slot runs the single-image
program, so its control flow stays per image (a finished slot skips its steps, stage 1 skips
the guidance: a `lax.cond` on a per-image predicate under `vmap` would compute both branches),
and each image's output, `info` and trace are bit-identical to `restore.restore` of that image
alone with the same key, whatever its slot, its neighbours, B or the chunk size. (XLA:CPU
rounds a vmapped batch differently from one image, and differently again for another B; the
differences grow through the per-image PCDM training, so vmapped slots would not be.)

Progress and Ctrl-C live between chunks: `on_chunk(steps)` receives the sampling steps the
real images took in that chunk (slots without an image count nothing), and each chunk runs
through `interrupt.call`, so Ctrl-C stops the loop within a fraction of a second.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax import config as config_lib
from upzeroir_jax import interrupt
from upzeroir_jax import restore as restore_lib
from upzeroir_jax.sampler import dqr
from upzeroir_jax.sampler import state as state_lib
from upzeroir_jax.sampler import step as step_lib

CHUNK_STEPS = 10  # steps per chunk of the fixed schedule (DQR uses its check interval).


class Item(NamedTuple):
  """One image of the queue: y `[H, W, 3]` float32 on the model grid in [0, 1], its raw PRNG
  key (uint32 `[2]`) and its per-task settings (`sampler.state.LossWeights`, scalars)."""

  y: Any
  key: Any
  weights: state_lib.LossWeights


@flax.struct.dataclass
class Slots:
  """B slots: `state` (`SamplerState`) and `dqr` (`DQRState`), each with a leading `[B]` axis.
  A slot without an image is `done`."""

  state: state_lib.SamplerState
  dqr: dqr.DQRState


def chunk_size(config: config_lib.RestoreConfig, chunk_steps: int = CHUNK_STEPS) -> int:
  """Steps per chunk: the DQR check interval with DQR (a check ends every chunk, as in
  `dqr.run`), else `chunk_steps`."""
  return config.dqr_every if config.dqr else chunk_steps


def _fresh(models: restore_lib.Models, y: jax.Array, key: jax.Array,
           weights: state_lib.LossWeights, config: config_lib.RestoreConfig,
           chunk: int) -> Slots:
  """One slot's content before its first step (what `restore` starts from)."""
  ts = restore_lib.timesteps(models, config)
  st = state_lib.init(models, config, y[None], key, weights=weights,
                      trace_len=restore_lib.trace_len(config))
  d = dqr.init(st, dqr.trace_len(ts.shape[0], chunk, config.dqr_max_restarts), ts[st.i],
               config.dqr_max_restarts)
  return Slots(state=st, dqr=d)


@functools.partial(jax.jit, static_argnames=("config", "chunk"), donate_argnames=("slots",))
def init(models: restore_lib.Models, slots: Slots, b: jax.Array, y: jax.Array, key: jax.Array,
         weights: state_lib.LossWeights, config: config_lib.RestoreConfig, chunk: int) -> Slots:
  """`slots` with slot b holding a fresh restoration of y `[H, W, 3]` with `key` and `weights`
  (the batch is donated: its buffers are reused)."""
  fresh = _fresh(models, y, key, weights, config, chunk)
  return jax.tree.map(lambda a, v: jax.lax.dynamic_update_index_in_dim(a, v, b, 0), slots,
                      fresh)


def empty(models: restore_lib.Models, shape: tuple[int, int], count: int,
          config: config_lib.RestoreConfig, chunk: int) -> Slots:
  """`count` slots for images of `shape` (H, W), all without an image (done, zero-filled)."""
  y = jax.ShapeDtypeStruct((*shape, 3), jnp.float32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  weights = state_lib.loss_weights(config, shape[0] * shape[1])
  one = jax.eval_shape(functools.partial(_fresh, config=config, chunk=chunk), models, y, key,
                       weights)
  slots = jax.tree.map(lambda s: jnp.zeros((count, *s.shape), s.dtype), one)
  return slots.replace(dqr=slots.dqr.replace(done=jnp.ones((count,), bool)))


@functools.partial(jax.jit, static_argnames=("config", "chunk"), donate_argnames=("slots",))
def advance(models: restore_lib.Models, slots: Slots, context: Any,
            config: config_lib.RestoreConfig, chunk: int) -> Slots:
  """Every slot `chunk` steps further (a done slot stays as it is), then, with DQR, its check
  (docs/method.md §7). The slots are mapped one at a time (module docstring)."""
  ts = restore_lib.timesteps(models, config)
  n = ts.shape[0]
  i_restart = dqr.restart_index(ts, config.dqr_t_restart)
  alphas = models.backbone.schedule.alphas_cumprod

  def one(slot: Slots) -> Slots:
    s, d = dqr.guarded_steps(slot.state, slot.dqr,
                             lambda s: step_lib.step(s, models, config, ts, context), n, chunk)
    if config.dqr:
      s, d = dqr.check(s, d, models.scorer, config, ts, alphas, i_restart)
    else:
      end = ~d.done & (s.i >= n)
      d = d.replace(done=d.done | end,
                    reason=jnp.where(end, dqr.END_OF_SCHEDULE, d.reason).astype(jnp.int32))
    return Slots(state=s, dqr=d)

  return jax.lax.map(one, slots)


@functools.partial(jax.jit, static_argnames=("config", "unet_per_step"))
def finish(models: restore_lib.Models, slots: Slots, b: jax.Array,
           config: config_lib.RestoreConfig, unet_per_step: int
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Slot b's output `[H, W, 3]` in [0, 1] and its info, as `restore.restore` returns them."""
  slot = jax.tree.map(lambda a: a[b], slots)
  s, d = slot.state, slot.dqr
  if not config.dqr:
    image, info = restore_lib.finish(s)
    return image[0], info
  ts = restore_lib.timesteps(models, config)
  image, info = restore_lib.finish_dqr(s, *dqr.outcome(s, d, config, ts, unet_per_step))
  return image[0], info


class Result(NamedTuple):
  """A finished image of the queue: its `index` in the queue and `RestoreResult`."""

  index: int
  result: restore_lib.RestoreResult


class Programs(NamedTuple):
  """The three programs of one static configuration, image shape and slot count:
  `init(models, slots, b, y, key, weights)`, `advance(models, slots, context)` and
  `finish(models, slots, b)`, jitted or compiled ahead of time (`compile_programs`)."""

  init: Callable[..., Slots]
  advance: Callable[..., Slots]
  finish: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _jitted(config: config_lib.RestoreConfig, chunk: int, unet: int) -> Programs:
  return Programs(init=functools.partial(init, config=config, chunk=chunk),
                  advance=functools.partial(advance, config=config, chunk=chunk),
                  finish=functools.partial(finish, config=config, unet_per_step=unet))


def _prepare(models: restore_lib.Models, config: config_lib.RestoreConfig
            ) -> tuple[restore_lib.Models, config_lib.RestoreConfig]:
  """The networks and static settings the programs take: the backbone set to `config`'s
  precision, the DQR scorer wrapped, the per-task fields of `config` reset."""
  config = state_lib.weightless(config)
  return restore_lib.prepared(models, config), config


def compile_programs(models: restore_lib.Models, config: config_lib.RestoreConfig,
            shape: tuple[int, int], *, slots: int, context: Any = None,
            chunk_steps: int = CHUNK_STEPS,
            lowered: Callable[[str | None], None] | None = None) -> Programs:
  """The three programs compiled ahead of time (or loaded from JAX's persistent compilation
  cache) for `restore_queue` with these arguments and images of `shape` (H, W) on `slots`
  slots. `lowered(None)` is called once all three are lowered, before compiling
  (`progress.Progress.compiling`)."""
  models, config = _prepare(models, config)
  chunk = chunk_size(config, chunk_steps)
  batch = jax.eval_shape(lambda: empty(models, shape, slots, config, chunk))
  b = jax.ShapeDtypeStruct((), jnp.int32)
  y = jax.ShapeDtypeStruct((*shape, 3), jnp.float32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  weights = jax.eval_shape(lambda: state_lib.loss_weights(config, shape[0] * shape[1]))
  unet = models.backbone.passes_per_step(context)
  parts = (init.lower(models, batch, b, y, key, weights, config=config, chunk=chunk),
           advance.lower(models, batch, context, config=config, chunk=chunk),
           finish.lower(models, batch, b, config=config, unet_per_step=unet))
  if lowered is not None:
    lowered(None)
  return Programs(*(p.compile() for p in parts))


def restore_queue(models: restore_lib.Models, items: Iterable[Item],
                  config: config_lib.RestoreConfig, *, slots: int, context: Any = None,
                  chunk_steps: int = CHUNK_STEPS,
                  on_chunk: Callable[[int], None] | None = None,
                  programs: Programs | None = None) -> Iterator[Result]:
  """Restores a queue of images of one shape on `slots` slots, yielding each as it finishes.

  Each image's result equals `restore.restore(models, item.y, item.key, cfg)` for the config
  `cfg` whose `sampler.state.loss_weights` are `item.weights` (bit for bit), whatever the slot
  count, the chunk size and the other images. A slot is refilled only after the caller has
  taken the result it held (the generator resumes).

  Args:
    models: `Models` (as for `restore.restore`).
    items: the queue (`Item`s, all of one shape), consumed lazily.
    config: the static settings (the per-task ones come from each item's weights).
    slots: B, images sampled at a time.
    context: text conditioning (`models.sd.text_context`), or None.
    chunk_steps: steps per chunk of the fixed schedule (DQR: `config.dqr_every`).
    on_chunk: called after each chunk with the sampling steps the images took in it.
    programs: `compile_programs` for this configuration, shape and slot count (default:
      jitted on first use).

  Yields:
    `Result(index, RestoreResult(image [H, W, 3], info))` in the order images finish.
  """
  if slots < 1:
    raise restore_lib.InputError(f"slots must be at least 1, got {slots}")
  models, config = _prepare(models, config)
  chunk = chunk_size(config, chunk_steps)
  if programs is None:
    programs = _jitted(config, chunk, models.backbone.passes_per_step(context))
  queue = enumerate(items)
  owner: list[int | None] = [None] * slots
  batch = None

  def refill(batch: Slots | None, b: int) -> Slots | None:
    nxt = next(queue, None)
    owner[b] = None if nxt is None else nxt[0]
    if nxt is None:
      return batch
    item = nxt[1]
    y = jnp.asarray(item.y, jnp.float32)
    if batch is None:
      batch = empty(models, y.shape[:2], slots, config, chunk)
    return programs.init(models, batch, jnp.int32(b), y, jnp.asarray(item.key, jnp.uint32),
                         item.weights)

  for b in range(slots):
    batch = refill(batch, b)
  before = np.zeros(slots, np.int64)
  while any(o is not None for o in owner):
    batch = interrupt.call(
        lambda b=batch: jax.block_until_ready(programs.advance(models, b, context)))
    steps, done = np.asarray(batch.dqr.steps), np.asarray(batch.dqr.done)
    live = np.asarray([o is not None for o in owner])
    if on_chunk is not None:
      on_chunk(int(np.sum(np.where(live, steps - before, 0))))
    before = steps.copy()
    for b in np.flatnonzero(live & done):
      image, info = programs.finish(models, batch, jnp.int32(b))
      yield Result(owner[b], restore_lib.RestoreResult(image, info))
      batch = refill(batch, int(b))
      before[b] = 0
