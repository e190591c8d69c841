"""Dynamic quality refinement (docs/method.md §7, Eq. 16–17): passes, early stop, re-initiation.

`run(state, scorer, config, step_fn, ...)` drives a pure sampler step `state -> state` inside
one `lax.while_loop` (the sampler's argument order: state, networks, settings, the rest). Every
k steps (`dqr_every`) from stage 2 on (t < `stage2_t`) it scores the latest decoded x̂0 with a
no-reference quality model (`Scorer`); Δ = |S_t − S_{t+k}| is the change since the latest
check of the same pass at least k steps back (Eq. 16):

- Δ < τ and t ≤ t_r: quality has settled: stop; the output is this x̂0.
- Δ < τ and t > t_r: continue (the estimate is still under-guided there).
- Δ ≥ τ: continue the reverse process.
- A pass that reaches the last timestep unsettled is re-initiated (Eq. 17): its final ẑ0 is
  re-noised to t_r, `z_{t_r} = sqrt(ᾱ_{t_r})·ẑ0 + γ·sqrt(1−ᾱ_{t_r})·ε`, ε ~ N(0, I), and
  sampling runs again from t_r on the same timestep grid, with checks and a fresh score history.
- At most `dqr_max_restarts` (2) re-initiations; a last pass that ends unsettled ends the run.

Output (`dqr_output`): "last" (default, the paper's rule): the x̂0 where the run ended (the
settled check's, or the last pass's final x̂0); "best": the best-scored x̂0 seen (the last one
when no check produced a finite score).

What each score history does, on the 450-step SD grid (t = 899, 897, …, 1, k = 10, checks
scored from t < 700, t_r = 500 → grid timestep 501, passes re-enter at step index 199):

| score history | what happens | steps |
|---|---|---|
| settles above t_r (e.g. constant) | the checks above t_r only record and continue; the first check at t ≤ t_r (t = 481) stops | 210 |
| settles below t_r (Δ ≥ τ down to t = 301) | continues through t_r; stops at the first check with Δ < τ (t = 261) | 320 |
| never settles | pass 1 runs to t = 1, two re-initiated passes from t = 501 run to t = 1; ends (cap) | 450 + 2·251 = 952 |
| NaN at every check | as "never settles" (NaN counts as no score) | 952 |

(The step counts follow from the grid and the rules above; `tests/test_dqr.py` scripts each
history on a small grid and on the tiny random SD.)

Choices where docs/method.md is silent [ours]:

- t is the timestep of the step that produced the scored x̂0. t_r is snapped to the nearest
  timestep of the sampler's grid (`restart_index`; ties go to the larger timestep) and Eq. 17
  uses ᾱ at that grid timestep, so the re-noised latent matches the step it re-enters.
- Δ needs two scores of the same pass: the first scored check of a pass only records.
- No checks in stage 1 (t ≥ `stage2_t`): there the latent is not guided yet, so x̂0 is a free
  prior sample. Those checks are skipped (no scorer call) and are not candidates for "best".
- The check after the last timestep of a pass is always scored (even in stage 1), so its final
  x̂0 is a candidate and may settle. When fewer than k steps remain, that check comes fewer
  than k steps after the previous one (a re-initiated pass counts its checks from its start;
  on the 450 grid its 251 steps end with a 1-step block). Δ compares like with like: it is
  taken against the latest check of the pass at least k steps back, so such a short block is
  compared with the check before the previous one, and a score drifting by ≥ τ per k steps
  never settles there.
- τ < 0 never settles: with no re-initiations the run is one full pass, equal to the fixed
  pass of `restore` (same output: x̂0 of the last step; same trace).
- An image the sampler's divergence guard failed (a state field `failure` ≠ 0, docs/method.md
  §3) stops at the next check with reason "diverged"; it is never re-initiated.
- Scores are computed on x̂0 clipped to [0, 1]. τ applies to `Scorer.quality`, the score
  divided by the scorer's `unit` (ARNIQA 1, NIQE 10; see `scorers.py`), so one τ serves both.
- A NaN score (e.g. NIQE of a perfectly flat image) counts as no score: it neither stops nor
  continues anything by itself, never becomes "best", and clears the pass's history so the next
  check only records.

`info` records `passes` (1 + re-initiations) and `pass_t`, the timestep where each pass began
(−1 for passes not run), besides the step and UNet counts, the stop reason and the score trace.

Under `vmap` every image stops and re-initiates on its own. The loop runs until the last image
is done; a finished image is frozen: its steps, re-noising and bookkeeping are masked by its
`done` flag, so its latent, PRNG key and PCDM state stay exactly as they were when it stopped.

Structure: the loop body runs k guarded steps (`lax.fori_loop`) and then one check. Checking
once per body, rather than a per-step `lax.cond` on "is this a check step", keeps the scorer
off the other steps also under `vmap`, where a `lax.cond` on a per-image predicate becomes a
select that evaluates both branches on every step.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

# info["stop_reason"] codes; STOP_REASONS[code] names them.
RUNNING = 0  # never returned: the loop ends only with one of the codes below.
SETTLED = 1  # Δ < τ at a check with t <= t_r (Eq. 16).
END_OF_SCHEDULE = 2  # the single pass ended unsettled (re-initiation off: dqr_max_restarts 0).
RESTART_CAP = 3  # the last allowed re-initiated pass ended unsettled.
DIVERGED = 4  # the sampler's divergence guard failed the image (docs/method.md §3).
STOP_REASONS = ("running", "settled", "end_of_schedule", "restart_cap", "diverged")


class DQRError(ValueError):
  """Input the quality-refinement loop cannot use; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class _WithoutParams:
  """Adapts a user's `score(img) -> [B]` to the `apply(params, img)` form (hashable)."""

  fn: Callable[[jax.Array], jax.Array]

  def __call__(self, params: Any, img: jax.Array) -> jax.Array:
    del params
    return self.fn(img)


@flax.struct.dataclass
class Scorer:
  """A no-reference image quality model for DQR: `scorer(img [B, H, W, 3]) -> [B]`.

  A pytree: `params` (e.g. an ARNIQA model) are leaves, so a scorer passes through `jax.jit`
  as an argument; `apply(params, img)` and the settings are static.

  Attributes:
    apply: `apply(params, img [B, H, W, 3] in [0, 1]) -> [B]` raw scores.
    params: pytree of arrays given to `apply` (None for parameter-free scorers).
    higher_is_better: orientation of the raw score (ARNIQA True, NIQE False).
    unit: raw-score size of one quality unit; τ is compared with differences of
      `quality = ±score / unit` (docs/method.md §7 gives τ = 0.01 for ARNIQA's [0, 1] scale).
  """

  apply: Callable[[Any, jax.Array], jax.Array] = flax.struct.field(pytree_node=False)
  params: Any = None
  higher_is_better: bool = flax.struct.field(pytree_node=False, default=True)
  unit: float = flax.struct.field(pytree_node=False, default=1.0)

  def __call__(self, img: jax.Array) -> jax.Array:
    """Raw scores `[B]` of images `[B, H, W, 3]` in [0, 1]."""
    return self.apply(self.params, img)

  def quality(self, score: jax.Array) -> jax.Array:
    """Raw score -> DQR quality: higher is better, in units of `unit` (τ's scale)."""
    sign = 1.0 if self.higher_is_better else -1.0
    return sign * score / self.unit


def wrap(
    fn: Callable[[jax.Array], jax.Array], higher_is_better: bool = True, unit: float = 1.0
) -> Scorer:
  """A `Scorer` from any jit-able `fn(img [B, H, W, 3]) -> [B]` (docs/method.md §7, pluggable).

  `unit`: raw-score size that τ is measured in (1 for scores on a [0, 1] scale).
  """
  if isinstance(fn, Scorer):
    return fn
  if not callable(fn):
    raise DQRError(f"a DQR scorer must be callable as score(img) -> [B], got {type(fn).__name__}")
  if not (isinstance(unit, (int, float)) and unit > 0):
    raise DQRError(f"scorer unit must be a number > 0, got {unit!r}")
  return Scorer(apply=_WithoutParams(fn), higher_is_better=higher_is_better, unit=float(unit))


@flax.struct.dataclass
class DQRState:
  """The refinement bookkeeping of one image, carried beside the sampler state.

  Attributes:
    steps: int32, sampler steps taken (all passes).
    restarts: int32, Eq. 17 re-initiations done (passes − 1).
    pass_t: [1 + max_restarts] int32, timestep where each pass began, −1 for passes not run.
    done: bool, the run has finished; the image is frozen.
    reason: int32 stop-reason code (`STOP_REASONS`).
    prev: float32 quality of the previous scored check of this pass; NaN when there is none.
    prev_steps: int32 `steps` at that check.
    prev2: float32 quality of the scored check before `prev` in this pass (NaN: none).
    best: float32 best quality seen (−inf before the first finite score).
    best_score: float32 raw score of `best_x0`.
    best_x0: [1, H, W, 3] the x̂0 with the best score.
    checks: int32, scored checks so far (the fill level of the trace).
    scores: [C] float32 raw score of each scored check, NaN after `checks`.
    score_t: [C] int32 timestep of the x̂0 of each scored check, −1 after `checks`.
  """

  steps: jax.Array
  restarts: jax.Array
  pass_t: jax.Array
  done: jax.Array
  reason: jax.Array
  prev: jax.Array
  prev_steps: jax.Array
  prev2: jax.Array
  best: jax.Array
  best_score: jax.Array
  best_x0: jax.Array
  checks: jax.Array
  scores: jax.Array
  score_t: jax.Array


def trace_len(num_steps: int, every: int, max_restarts: int) -> int:
  """Static size of the score trace: an upper bound on the number of scored checks.

  A pass sweeps at most `num_steps` steps and is checked once per `every` steps (the last
  check of a pass may come sooner); there are at most `1 + max_restarts` passes.
  """
  return (1 + max_restarts) * math.ceil(num_steps / every)


def restart_index(timesteps: jax.Array, t_restart: int) -> jax.Array:
  """Index into the descending timestep array of the timestep closest to `t_restart`.

  Ties (t_r midway between two grid timesteps) go to the larger timestep, the earlier index.
  """
  return jnp.argmin(jnp.abs(jnp.asarray(timesteps, jnp.int32) - t_restart)).astype(jnp.int32)


def renoise(state: Any, timesteps: jax.Array, alphas_cumprod: jax.Array, index: jax.Array,
            gamma: float) -> Any:
  """Eq. 17: re-noise the latest ẑ0 to timestep `timesteps[index]` and resume there.

  `z = sqrt(ᾱ)·ẑ0 + γ·sqrt(1−ᾱ)·ε` with ᾱ = `alphas_cumprod[timesteps[index]]` and
  `ε ~ N(0, I)` drawn from `jax.random.split(state.key)[1]`; the state keeps the first half of
  the split as its key and gets `i = index`.
  """
  key, sub = jax.random.split(state.key)
  z0 = state.z0
  eps = jax.random.normal(sub, z0.shape, jnp.float32)
  a = alphas_cumprod[timesteps[index]].astype(jnp.float32)
  z = jnp.sqrt(a) * z0.astype(jnp.float32) + gamma * jnp.sqrt(1.0 - a) * eps
  return state.replace(z=z.astype(state.z.dtype), i=index, key=key)


def init(state: Any, trace_size: int, first_t: jax.Array, max_restarts: int) -> DQRState:
  """Fresh bookkeeping for a sampler state whose x̂0 is `state.x0` `[1, H, W, 3]`; the first
  pass begins at timestep `first_t`."""
  return DQRState(
    steps=jnp.int32(0),
    restarts=jnp.int32(0),
    pass_t=jnp.full((1 + max_restarts,), -1, jnp.int32).at[0].set(first_t),
    done=jnp.bool_(False),
    reason=jnp.int32(RUNNING),
    prev=jnp.float32(jnp.nan),
    prev_steps=jnp.int32(0),
    prev2=jnp.float32(jnp.nan),
    best=jnp.float32(-jnp.inf),
    best_score=jnp.float32(jnp.nan),
    best_x0=state.x0,
    checks=jnp.int32(0),
    scores=jnp.full((trace_size,), jnp.nan, jnp.float32),
    score_t=jnp.full((trace_size,), -1, jnp.int32),
  )


def check(state: Any, d: DQRState, scorer: Scorer, config: Any, timesteps: jax.Array,
           alphas_cumprod: jax.Array, i_restart: jax.Array) -> tuple[Any, DQRState]:
  """One quality check after a block of steps: score, record, stop / continue / re-initiate."""
  n = timesteps.shape[0]
  live = ~d.done
  t = timesteps[jnp.clip(state.i - 1, 0, n - 1)]
  at_end = state.i >= n
  scored = live & (at_end | (t < config.stage2_t))

  def score() -> jax.Array:
    return scorer(jnp.clip(state.x0, 0.0, 1.0)).astype(jnp.float32).reshape(())

  raw = jax.lax.cond(scored, score, lambda: jnp.float32(jnp.nan))
  q = scorer.quality(raw)
  finite = scored & jnp.isfinite(q)
  # Like with like: the latest check of this pass at least k steps back (a short last block
  # is compared with the check before the previous one).
  ref = jnp.where(d.steps - d.prev_steps >= config.dqr_every, d.prev, d.prev2)
  failed = live & (getattr(state, "failure", 0) != 0)
  settled = (finite & (jnp.abs(q - ref) < config.dqr_tau) & (t <= config.dqr_t_restart)
             & ~failed)
  unsettled_end = live & at_end & ~settled & ~failed
  reinit = unsettled_end & (d.restarts < config.dqr_max_restarts)
  finished = settled | failed | (unsettled_end & ~reinit)
  ended = RESTART_CAP if config.dqr_max_restarts > 0 else END_OF_SCHEDULE
  reason = jnp.where(failed, DIVERGED, jnp.where(settled, SETTLED, ended))

  better = finite & (q > d.best)
  slot = jnp.where(scored, d.checks, d.scores.shape[0])  # out of range: dropped.
  pass_slot = jnp.where(reinit, d.restarts + 1, d.pass_t.shape[0])
  d = d.replace(
    restarts=d.restarts + reinit.astype(jnp.int32),
    pass_t=d.pass_t.at[pass_slot].set(timesteps[i_restart], mode="drop"),
    done=d.done | finished,
    reason=jnp.where(finished, reason, d.reason).astype(jnp.int32),
    prev=jnp.where(reinit, jnp.nan, jnp.where(scored, q, d.prev)),
    prev_steps=jnp.where(scored, d.steps, d.prev_steps),
    prev2=jnp.where(reinit | (scored & ~jnp.isfinite(q)), jnp.nan,
                    jnp.where(scored, d.prev, d.prev2)),
    best=jnp.where(better, q, d.best),
    best_score=jnp.where(better, raw, d.best_score),
    best_x0=jnp.where(better, state.x0, d.best_x0),
    checks=d.checks + scored.astype(jnp.int32),
    scores=d.scores.at[slot].set(raw, mode="drop"),
    score_t=d.score_t.at[slot].set(t, mode="drop"),
  )
  state = jax.lax.cond(
    reinit,
    lambda s: renoise(s, timesteps, alphas_cumprod, i_restart, config.dqr_gamma),
    lambda s: s,
    state,
  )
  return state, d


def run(
    state: Any,
    scorer: Scorer | Callable[[jax.Array], jax.Array],
    config: Any,
    step_fn: Callable[[Any], Any],
    timesteps: jax.Array,
    alphas_cumprod: jax.Array,
    *,
    unet_per_step: int = 1,
) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
  """The restore loop with dynamic quality refinement (docs/method.md §7, Eq. 16–17).

  Args:
    state: sampler state of one image with fields `z`, `i`, `z0`, `x0` `[1, H, W, 3]`, `key`
      and a `replace` method (a `flax.struct.dataclass`). vmap `run` for a batch.
    scorer: a `Scorer`, or any `score(img [B, H, W, 3]) -> [B]` (higher is better, [0, 1]).
    config: a `RestoreConfig` (static); reads `dqr_every`, `dqr_tau`, `dqr_t_restart`,
      `dqr_max_restarts`, `dqr_gamma`, `dqr_output` and `stage2_t`.
    step_fn: pure `state -> state`, one reverse step at `timesteps[state.i]`, which sets
      `state.z` (next latent), `state.z0` (ẑ0), `state.x0` (decoded x̂0) and advances `i`.
    timesteps: int32 `[N]`, descending, the timestep of each step.
    alphas_cumprod: `[T]` ᾱ table of the forward process (Eq. 17).
    unet_per_step: UNet evaluations one step costs (2 with classifier-free guidance).

  Returns:
    `(state, image, info)`: the final sampler state, the output x̂0 `[1, H, W, 3]` per
    `config.dqr_output` ("last": `state.x0` where the run ended; "best": the best-scored x̂0,
    or the last when no check produced a finite score), and `info` with int32 `steps`,
    `unet_evals`, `restarts` (re-initiations), `passes` (1 + restarts), `pass_t`
    `[1 + dqr_max_restarts]` (timestep where each pass began, −1 for passes not run),
    `stop_reason` (`STOP_REASONS[code]`), `checks`, the timestep `stop_t` of the last step
    taken, `best_score` (raw units), and the trace: `scores` `[C]`
    float32 (raw scores of the scored checks in order, NaN-padded) and `score_t` `[C]` int32
    (their timesteps, −1-padded), C = `trace_len(N, dqr_every, dqr_max_restarts)`.
  """
  scorer = wrap(scorer)
  if state.x0.ndim != 4 or state.x0.shape[0] != 1:
    raise DQRError(
      f"dqr.run drives one image per state (x0 [1, H, W, 3]), got x0 {state.x0.shape}; "
      "vmap it over a batch")
  timesteps = jnp.asarray(timesteps, jnp.int32)
  n = timesteps.shape[0]
  every = config.dqr_every
  i_restart = restart_index(timesteps, config.dqr_t_restart)

  def body(carry):
    s, d = guarded_steps(*carry, step_fn, n, every)
    return check(s, d, scorer, config, timesteps, alphas_cumprod, i_restart)

  d = init(state, trace_len(n, every, config.dqr_max_restarts), timesteps[state.i],
           config.dqr_max_restarts)
  state, d = jax.lax.while_loop(lambda c: ~c[1].done, body, (state, d))
  image, info = outcome(state, d, config, timesteps, unet_per_step)
  return state, image, info


def guarded_steps(state: Any, d: DQRState, step_fn: Callable[[Any], Any], n: int,
                  count: int) -> tuple[Any, DQRState]:
  """`count` steps of `step_fn` (a `lax.fori_loop`); a step is skipped (`lax.cond`) once the
  run is done or its pass has reached the last of the `n` timesteps. `d.steps` counts the
  steps taken. One block of `run`, and one chunk of the sampling driver."""

  def one(_, carry):
    s, d = carry
    active = ~d.done & (s.i < n)
    s = jax.lax.cond(active, step_fn, lambda s: s, s)
    return s, d.replace(steps=d.steps + active.astype(jnp.int32))

  return jax.lax.fori_loop(0, count, one, (state, d))


def outcome(state: Any, d: DQRState, config: Any, timesteps: jax.Array,
            unet_per_step: int = 1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The output x̂0 `[1, H, W, 3]` (per `config.dqr_output`) and the info of a finished run
  (`run`'s; also the sampling driver's, which takes the steps and checks chunk by chunk)."""
  n = timesteps.shape[0]
  image = state.x0
  if config.dqr_output == "best":
    image = jnp.where(jnp.isfinite(d.best), d.best_x0, state.x0)
  info = {
    "steps": d.steps,
    "unet_evals": d.steps * unet_per_step,
    "restarts": d.restarts,
    "passes": d.restarts + 1,
    "pass_t": d.pass_t,
    "stop_reason": d.reason,
    "stop_t": timesteps[jnp.clip(state.i - 1, 0, n - 1)],
    "checks": d.checks,
    "best_score": d.best_score,
    "scores": d.scores,
    "score_t": d.score_t,
  }
  return image, info
