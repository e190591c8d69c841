"""The benchmark's measurements: compiled JAX steps and restores, the PyTorch reference steps and
LD-RPS, one-step parity, memory.

Timing: JAX results are waited for with `jax.block_until_ready`, torch work with
`torch.cuda.synchronize()` on a GPU. Every JAX function is compiled ahead of time
(`lower().compile()`, timed apart), so no timed call includes compilation; torch warm-up steps
are timed apart too.
"""

import contextlib
import dataclasses
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from eval import ldrps_reference as ldrps
from eval import torch_reference as tr
from eval.bench import setup as setup_lib
from eval.bench.options import BenchmarkError, Options
from eval.bench.setup import Setup
from upzeroir_jax.sampler import dqr as dqr_lib
from upzeroir_jax.sampler import state as state_lib

# The per-step values both implementations compute; t, stage and the divergence guard's code
# are bookkeeping of our sampler.
TRACE_TERMS = tuple(k for k in state_lib.TRACE_KEYS if k not in ("t", "stage", "guard"))


@dataclasses.dataclass
class Timing:
  """Seconds measured by `clock`."""

  seconds: float = 0.0


def _no_sync() -> None:
  return None


@contextlib.contextmanager
def clock(sync: Callable[[], None] = _no_sync) -> Iterator[Timing]:
  """Wall-clock seconds of a `with` block; `sync` (a device barrier) runs on entry and exit."""
  timing = Timing()
  sync()
  start = time.perf_counter()
  yield timing
  sync()
  timing.seconds = time.perf_counter() - start


def memory(setup: Setup) -> dict[str, int]:
  """Peak memory so far: process peak RSS; JAX and torch device peaks on a GPU (JAX's is
  never reset, torch's is reset per part)."""
  out = {"process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  if setup.device.type == "cuda":
    out["torch_peak_bytes"] = int(torch.cuda.max_memory_allocated(setup.device))
  peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  if peak is not None:
    out["jax_peak_bytes"] = int(peak)
  return out


def compiled_stats(compiled: Any) -> dict[str, float]:
  """XLA's analyses of a compiled function: argument, output and temporary bytes, and flops."""
  out: dict[str, float] = {}
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):
    m = None
  names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
           "alias_size_in_bytes")
  out.update({f"xla_{n}": int(getattr(m, n)) for n in names if hasattr(m, n)})
  try:
    cost = compiled.cost_analysis()
  except (NotImplementedError, RuntimeError):
    cost = None
  cost = cost[0] if isinstance(cost, list) and cost else cost
  if cost and "flops" in cost:
    out["xla_flops"] = float(cost["flops"])
  return out


def _check_on_device(what: str, tree: Any) -> None:
  host = setup_lib.host_leaves(tree)
  if host:
    raise BenchmarkError(f"{what} holds host arrays ({', '.join(host[:3])}); put them on the "
                         "device once with setup.on_device")


def images_per_minute(step: dict[str, Any], n1: int, n2: int) -> float:
  """Images per minute of the fixed schedule estimated from one batch size's per-step times:
  per image (n₁·t₁ + n₂₃·t₂₃) / B, n₁ the stage-1 steps (for comparing with torch, which has
  no compiled restore; the measured figure is `restore_batches`)."""
  per_image = (n1 * step["step_s_stage1"] + n2 * step["step_s_guided"]) / step["batch"]
  return 60.0 / per_image


def step_arguments(setup: Setup, batch: int) -> tuple[Callable, tuple[Any, ...]]:
  """Our step at batch B and the arguments it is compiled for: (fn, (state, models, t)); the
  state holds the input y.

  Batch 1 is one image's step; B > 1 a `vmap` over images (the models and t unbatched). The
  state is created on the device.
  """
  models, config, ctx = setup.models, setup.config, setup.ctx

  def one(st, m, t):
    return setup_lib.sampler_step(st, m, config, t, ctx)

  def init(yy, k):
    return setup_lib.sampler_init(models, config, yy, k)

  key = jax.random.key(setup.seed)
  if batch == 1:
    fn = one
    st = jax.jit(init)(setup.y, key)
  else:
    fn = jax.vmap(one, in_axes=(0, None, None))
    y = jnp.broadcast_to(setup.y, (batch,) + setup.y.shape)
    st = jax.jit(jax.vmap(init))(y, jax.random.split(key, batch))
  return fn, (jax.block_until_ready(st), models, jnp.int32(setup.t_guided))


class JaxStepper:
  """Our guided step at batch B, compiled once with the state donated.

  Construction compiles (`lower().compile()`, timed) and runs the first step at the guided
  timestep; for batch 1 it keeps `probe`, the state before and after that step, for `parity`.
  """

  def __init__(self, setup: Setup, batch: int):
    fn, (st, models, t2) = step_arguments(setup, batch)
    _check_on_device("the models and state given to the compiled step", (models, st))
    self.probe: dict[str, Any] = {}
    if batch == 1:
      self.probe["before"] = jax.device_get(
        {k: getattr(st, k) for k in ("z", "pcdm", "disc", "disc2")})
    with clock() as c_compile:
      self.compiled = jax.jit(fn, donate_argnums=(0,)).lower(st, models, t2).compile()
    with clock() as c_first:
      st = jax.block_until_ready(self.compiled(st, models, t2))
    if batch == 1:
      self.probe["after"] = jax.device_get(
        {"z": st.z, "pcdm": st.pcdm, "disc": st.disc, "disc2": st.disc2,
         "trace": {k: st.trace[k][0] for k in TRACE_TERMS}})
    self.models, self.st = models, st
    self.info = {"batch": batch, "compile_s": c_compile.seconds, "first_run_s": c_first.seconds,
                 **compiled_stats(self.compiled)}

  def run(self, t: int, n: int) -> float:
    """Seconds per step over n chained steps at timestep t (results waited for)."""
    t = jax.device_put(jnp.int32(t))
    with clock() as c:
      for _ in range(n):
        self.st = self.compiled(self.st, self.models, t)
      self.st = jax.block_until_ready(self.st)
    return c.seconds / n

  def finite(self) -> bool:
    return bool(np.isfinite(np.asarray(self.st.z)).all())


def restore_arguments(setup: Setup, batch: int) -> tuple[jax.Array, jax.Array]:
  """The input of a restore at batch B (0: one image `[H, W, 3]`) and its key, on the device."""
  y = setup.y[0] if batch == 0 else jnp.broadcast_to(setup.y, (batch,) + setup.y.shape[1:])
  return jax.block_until_ready((y, jax.random.key(setup.seed + 1)))


def jax_restore(setup: Setup, batch: int, dqr: bool, steps: int) -> dict[str, Any]:
  """Compile time and the time of one call of our compiled `restore` of B images (B = 0: one
  image without a batch axis), fixed schedule or DQR, with `steps` steps. The call after the
  ahead-of-time compilation is timed, its results waited for."""
  config = setup.config.replace(steps=steps, dqr=dqr)
  ctx = setup.ctx

  def run(models, y, key):
    return setup_lib.sampler_restore(models, y, key, config, ctx)

  y, key = restore_arguments(setup, batch)
  _check_on_device("the models and input given to the compiled restore", (setup.models, y))
  with clock() as c_compile:
    compiled = jax.jit(run).lower(setup.models, y, key).compile()
  with clock() as c_run:
    image, info = jax.block_until_ready(compiled(setup.models, y, key))
  out = {"batch": max(batch, 1), "dqr": dqr, "steps_config": steps,
         "compile_s": c_compile.seconds, "run_s": c_run.seconds,
         "finite": bool(np.isfinite(np.asarray(image)).all()), **compiled_stats(compiled)}
  if dqr:
    out.update(steps_taken=int(info["steps"]), restarts=int(info["restarts"]),
               stop_reason=dqr_lib.STOP_REASONS[int(info["stop_reason"])])
  else:
    out["steps_taken"] = steps
  return out


def restore_batch(setup: Setup, batch: int, opts: Options) -> dict[str, Any]:
  """Our compiled fixed-schedule `restore` of a batch of B images, measured: images per minute
  at the steps run (`restore_steps`) and at the full `steps` (the run time scaled by
  steps / restore_steps; equal when `restore_scale` is 1)."""
  r = jax_restore(setup, batch, False, opts.restore_steps)
  full_s = r["run_s"] * opts.steps / opts.restore_steps
  r.update(steps_full=opts.steps, restore_scale=opts.restore_scale,
           images_per_minute_run=60.0 * batch / r["run_s"],
           images_per_minute=60.0 * batch / full_s, per_image_s_full=full_s / batch)
  return r


class TorchStepper:
  """The PyTorch reference step at batch B; construction runs (and times) the warm-up steps."""

  def __init__(self, setup: Setup, batch: int, warmup: int):
    if setup.device.type == "cuda":
      torch.cuda.reset_peak_memory_stats(setup.device)
    self.setup = setup
    self.step = tr.GuidedStep(setup.torch_sd, setup.torch_vgg, setup.config, setup.num_pixels)
    gen = torch.Generator().manual_seed(setup.seed)
    self.ims = [self.step.init_image(
      setup.torch_y, torch.randn(setup.latent_shape, generator=gen).to(setup.device))
      for _ in range(batch)]
    with clock(setup.sync) as c_warm:
      for _ in range(warmup):
        self.step(self.ims, setup.t_guided, setup.torch_ctx)
    self.info = {"batch": batch, "warmup_s": c_warm.seconds, "warmup_steps": warmup}

  def run(self, t: int, n: int) -> float:
    """Seconds per step over n steps at timestep t (device synchronised)."""
    with clock(self.setup.sync) as c:
      for _ in range(n):
        self.step(self.ims, t, self.setup.torch_ctx)
    return c.seconds / n

  def finite(self) -> bool:
    return bool(torch.isfinite(self.ims[0].z).all())


def _time_rounds(stepper: Any, setup: Setup, timed: int, times: dict[str, list[float]]) -> None:
  for stage, t in (("stage1", setup.t_stage1), ("guided", setup.t_guided)):
    times[stage].append(stepper.run(t, timed))


def _summary(stepper: Any, times: dict[str, list[float]], timed: int) -> dict[str, Any]:
  out = {**stepper.info, "timed_steps": timed, "repeats": len(times["guided"]),
         "finite": stepper.finite()}
  for stage, values in times.items():
    out[f"step_s_{stage}"] = min(values)
    out[f"step_s_{stage}_median"] = float(np.median(values))
  return out


def measure_batch(setup: Setup, batch: int, with_jax: bool, with_torch: bool, opts: Options
                  ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, Any]:
  """Per-step times of both sides at one batch size: `repeats` rounds of `timed_steps` steps
  per stage; the reported time is the best round (the median is kept too).

  On a CPU the rounds of the two sides alternate, so both see the same background load. On a
  GPU torch runs first and frees its cached memory before JAX compiles, so the two never hold
  device memory at once. Returns (JAX result, torch result, the JAX stepper or None).
  """
  steppers, jax_stepper = {}, None
  interleave = setup.device.type == "cpu"
  times = {n: {"stage1": [], "guided": []} for n in ("jax", "torch")}
  results: dict[str, Any] = {"jax": None, "torch": None}

  def finish(name: str) -> None:
    results[name] = _summary(steppers.pop(name), times[name], opts.timed_steps)

  if with_torch:
    steppers["torch"] = TorchStepper(setup, batch, opts.warmup_steps)
    if not interleave:
      for _ in range(opts.repeats):
        _time_rounds(steppers["torch"], setup, opts.timed_steps, times["torch"])
      finish("torch")
      if setup.device.type == "cuda":
        torch.cuda.empty_cache()
  if with_jax:
    jax_stepper = steppers["jax"] = JaxStepper(setup, batch)
  for _ in range(opts.repeats):
    for name, stepper in steppers.items():
      _time_rounds(stepper, setup, opts.timed_steps, times[name])
  for name in list(steppers):
    finish(name)
  return results["jax"], results["torch"], jax_stepper


def measure_variant(setup: Setup, base: JaxStepper, spec: str, opts: Options) -> dict[str, Any]:
  """A `--variants` entry at batch 1, its rounds alternating with those of the base step, and
  its speed-up (base time / variant time, best rounds) over the base."""
  stepper = JaxStepper(setup_lib.variant_setup(setup, spec), 1)
  times = {n: {"stage1": [], "guided": []} for n in ("base", "variant")}
  for _ in range(opts.repeats):
    _time_rounds(base, setup, opts.timed_steps, times["base"])
    _time_rounds(stepper, setup, opts.timed_steps, times["variant"])
  out = _summary(stepper, times["variant"], opts.timed_steps)
  for stage in ("guided", "stage1"):
    out[f"base_step_s_{stage}"] = min(times["base"][stage])
    out[f"speedup_{stage}"] = out[f"base_step_s_{stage}"] / out[f"step_s_{stage}"]
  return out


def _nchw(x: Any) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _compare_update(before: Any, jax_after: Any, torch_after: Any, lr: float) -> dict[str, Any]:
  """How closely two optimiser updates of the same params agree.

  Adam's first step moves each parameter by about ±lr (its sign is that of the gradient), so
  where a gradient is tiny, float-level differences upstream can flip the sign: `agreement`
  is the fraction of parameters whose two updates differ by less than lr / 10.
  """
  flat = [np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(t)])
          for t in (before, jax_after, torch_after)]
  diff = np.abs(flat[1] - flat[2])
  update = np.abs(flat[1] - flat[0])
  return {"max_abs_diff": float(diff.max()), "update_max_abs": float(update.max()),
          "agreement": float(np.mean(diff < lr / 10)), "size": int(diff.size)}


def parity(setup: Setup, probe: dict[str, Any]) -> dict[str, Any]:
  """The first guided step of both sides from the same state, side by side: loss terms (those
  before the PCDM update: pcdm_*, disc_loss; after it: the guidance terms and grad_norm), the
  latent after the step, and the PCDM / discriminator updates."""
  step = tr.GuidedStep(setup.torch_sd, setup.torch_vgg, setup.config, setup.num_pixels)
  before, after = probe["before"], probe["after"]
  im = step.init_image(setup.torch_y, _nchw(before["z"]).to(setup.device), before)
  (row,) = step([im], setup.t_guided, setup.torch_ctx)
  z_jax = np.asarray(after["z"])
  z_torch = im.z.cpu().numpy().transpose(0, 2, 3, 1)
  c = setup.config
  return {
    "t": setup.t_guided,
    "terms": {k: {"jax": float(after["trace"][k]), "torch": float(row[k])} for k in TRACE_TERMS},
    "z_max_abs_diff": float(np.abs(z_jax - z_torch).max()),
    "z_max_abs": float(np.abs(z_jax).max()),
    "pcdm": _compare_update(before["pcdm"], after["pcdm"], im.pcdm.flax_params(), c.pcdm_lr),
    "disc": _compare_update(before["disc"], after["disc"], im.disc.flax_params(), c.disc_lr),
    "disc2": _compare_update(before["disc2"], after["disc2"], im.disc2.flax_params(),
                             c.adv_disc_lr),
  }


def torch_ldrps(setup: Setup, scale: float, task: str) -> dict[str, Any]:
  """One image through LD-RPS's procedure for `task` (its per-task recipe, step counts times
  `scale`), timed end to end and extrapolated to its full step count."""
  if setup.device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(setup.device)
  proc = ldrps.LDRPSProcedure(setup.torch_sd, setup.torch_vgg, setup_lib.task_config(setup, task),
                           setup.num_pixels, scale)
  gen = torch.Generator(setup.device).manual_seed(setup.seed)
  with clock(setup.sync) as c:
    image = proc.run(setup.torch_y, gen, setup.torch_prompt)
  full = ldrps.ldrps_total_steps(task)
  return {"scale": scale, "recurrences": proc.recipe.recurrences,
          "terms": sorted(proc.recipe.terms), "prompt": proc.recipe.prompt,
          "steps": proc.total_steps(), "full_steps": full, "run_s": c.seconds,
          "per_image_s_full": c.seconds * full / proc.total_steps(),
          "finite": bool(torch.isfinite(image).all())}
