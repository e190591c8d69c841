r"""Speed benchmark: our JAX pipeline against a PyTorch eager reference with the same weights.

One run, one device, one backbone size (`--size=tiny` for a CPU, `--size=sd21` for the
SD-2.1-base architecture on a GPU). Both sides hold the same random weights: the UNet and VAE
are created as diffusers PyTorch modules and converted to Flax, the VGG16 layers likewise, and
PCDM / discriminators start from the same values. Measured, for our JAX pipeline and for the
PyTorch eager reference (`eval/torch_reference.py`):

- compile time (JAX: `lower().compile()` of each function; torch: its warm-up steps),
- time per guided step at equal work, per batch size: a guided stage-2 step (PCDM update and
  the guidance gradient through decoder and encoder) and a stage-1 step (PCDM update only),
- one-step parity: both sides run the first guided step from the same state; their loss
  terms, latents and PCDM updates are reported side by side (float32 only),
- time per restored image of our `restore` at batch 1, fixed schedule and with DQR,
- the LD-RPS procedure in PyTorch (450 guided steps, then two recurrences of 225 from t ≈ 500,
  two latents per image, CFG always on) per restored image,
- peak memory: on a GPU, JAX `memory_stats()["peak_bytes_in_use"]` (never reset, so read in
  order: after the batch-1 parts, then after larger batches) and torch
  `max_memory_allocated` (reset per part); on a CPU the peak resident set size of the whole
  process (`ru_maxrss`: JAX and torch together, never decreasing), read after each part,
- images per minute at batch 1, 2, 4, 8 for the fixed `--steps` schedule, from the per-step
  times of each stage: per image (n₁·t₁ + n₂₃·t₂₃) / B, n₁ the stage-1 steps.

It prints the ratios (torch time / JAX time: > 1 means JAX is faster) and each performance
target with its measured value and MET / NOT MET / NOT MEASURED, and writes everything as JSON.

Timing: JAX results are waited for with `jax.block_until_ready`, torch work with
`torch.cuda.synchronize()` on a GPU. Compilation and warm-up are excluded from per-step times
and reported separately. No tokenizer, download or file outside the repository is needed: the
empty-prompt context is a random array, and `--cfg` adds a random prompt context (both sides).
Step counts can be scaled down (`--restore_scale`, `--ldrps_scale`); per-image times are then
extrapolated linearly to the full counts, and the scales are recorded in the output.

Examples:
  python eval/benchmark.py --size=tiny --out=/tmp/bench.json
  python eval/benchmark.py --size=sd21 --device_check --ldrps_scale=0.1 --out=bench.json
"""

import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib
import dataclasses
import itertools
import json
import platform
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags, logging

from eval import torch_reference as tr
from upzeroir_jax import config as config_lib
from upzeroir_jax import restore as restore_lib
from upzeroir_jax.models import arniqa as arniqa_lib
from upzeroir_jax.models import schedule as schedule_lib
from upzeroir_jax.models import sd as sd_lib
from upzeroir_jax.models import sd_convert
from upzeroir_jax.sampler import dqr as dqr_lib
from upzeroir_jax.sampler import scorers
from upzeroir_jax.sampler import state as state_lib
from upzeroir_jax.sampler import step as step_lib

PARTS = ("step", "restore", "dqr", "batch", "torch_step", "torch_batch", "ldrps")
TRACE_TERMS = ("pcdm_loss", "pcdm_mse", "pcdm_per", "pcdm_adv", "disc_loss", "deg", "mse", "per",
               "adv", "distance", "quality", "grad_norm")

_SIZE = flags.DEFINE_enum("size", "tiny", ["tiny", "sd21"],
                          "Backbone: `tiny` (test-sized SD, CPU) or `sd21` (SD-2.1-base "
                          "architecture, random weights, for a GPU).")
_RESOLUTION = flags.DEFINE_integer("resolution", 0, "Image side in pixels (0: 64 tiny, 512 sd21).")
_PARTS = flags.DEFINE_list("parts", list(PARTS), f"Parts to run, any of {', '.join(PARTS)}.")
_BATCHES = flags.DEFINE_list("batches", ["1", "2", "4", "8"],
                             "Batch sizes of the batch / torch_batch parts.")
_TIMED_STEPS = flags.DEFINE_integer("timed_steps", 5, "Timed steps per step measurement.")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 2, "Untimed torch warm-up steps.")
_STEPS = flags.DEFINE_integer("steps", 450, "DDIM steps of our restore (config.steps).")
_RESTORE_SCALE = flags.DEFINE_float("restore_scale", 1.0,
                                    "Run our restores with round(scale·steps) steps.")
_LDRPS_SCALE = flags.DEFINE_float("ldrps_scale", 1.0,
                                  "Run LD-RPS with its 450/225/225 steps times this.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Compute dtype of our UNet/VAE (PCDM, losses, latents stay float32).")
_REMAT = flags.DEFINE_bool("remat", False, "Recompute the decoder in the guidance backward pass.")
_CFG = flags.DEFINE_bool("cfg", False, "Random prompt context: CFG on in our pipeline and in the "
                         "equal-work torch step (LD-RPS always runs CFG).")
_TF32 = flags.DEFINE_bool("torch_tf32", True, "Let torch use TF32 for float32 matmuls and convs "
                          "on a GPU, as XLA does by default.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of weights, inputs and noise.")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here.")
_DEVICE_CHECK = flags.DEFINE_bool("device_check", False,
                                  "Require a GPU for both JAX and torch and print the devices.")


@dataclasses.dataclass(frozen=True)
class Options:
  """What to run (the flags of this binary)."""

  size: str = "tiny"
  resolution: int = 0
  parts: tuple[str, ...] = PARTS
  batches: tuple[int, ...] = (1, 2, 4, 8)
  timed_steps: int = 5
  warmup_steps: int = 2
  steps: int = 450
  restore_scale: float = 1.0
  ldrps_scale: float = 1.0
  dtype: str = "float32"
  remat: bool = False
  cfg: bool = False
  torch_tf32: bool = True
  seed: int = 0

  def __post_init__(self):
    unknown = sorted(set(self.parts) - set(PARTS))
    if unknown:
      raise app.UsageError(f"unknown --parts {unknown}; choose from {', '.join(PARTS)}")
    if not self.batches or min(self.batches) < 1:
      raise app.UsageError("--batches must be positive integers, e.g. 1,2,4,8")
    if self.timed_steps < 1 or self.warmup_steps < 0 or self.steps < 2:
      raise app.UsageError("--timed_steps must be >= 1, --warmup_steps >= 0, --steps >= 2")
    if not (0 < self.restore_scale <= 1 and 0 < self.ldrps_scale <= 1):
      raise app.UsageError("--restore_scale and --ldrps_scale must be in (0, 1]")
    if self.resolution and (self.resolution < 16 or self.resolution % 16):
      raise app.UsageError("--resolution must be a multiple of 16 (0 for the size's default)")

  @property
  def restore_steps(self) -> int:
    return max(2, round(self.steps * self.restore_scale))


# ---------------------------------------------------------------------------------------------
# Models and inputs, shared by both sides.


@dataclasses.dataclass
class Setup:
  """Both pipelines on the same weights, input and settings.

  JAX: `models` (`restore.Models`), `y` `[1, H, W, 3]`, `ctx` (None, or `[1, L, D]` with
  `--cfg`). torch: `torch_sd`, `torch_vgg`, `torch_y` `[1, 3, H, W]`, `torch_ctx` (None or
  `[2, L, D]`: unconditional and prompt) for the equal-work step, `torch_cfg_ctx` (always
  `[2, L, D]`) for LD-RPS, which always runs CFG.
  """

  models: Any
  config: config_lib.RestoreConfig
  y: jax.Array
  ctx: Any
  torch_sd: tr.TorchSD
  torch_vgg: tr.VGGRelu22
  torch_y: torch.Tensor
  torch_ctx: Any
  torch_cfg_ctx: torch.Tensor
  device: torch.device
  seed: int
  resolution: int
  latent_shape: tuple[int, ...]
  t_stage1: int
  t_guided: int
  setup_s: float

  @property
  def num_pixels(self) -> int:
    return self.resolution * self.resolution

  @property
  def sync(self) -> Callable[[], None]:
    if self.device.type == "cuda":
      return lambda: torch.cuda.synchronize(self.device)
    return lambda: None


def check_devices() -> str:
  """A one-line description of the GPU both JAX and torch see; usage error if either has none."""
  jax_gpu = jax.default_backend() == "gpu"
  torch_gpu = torch.cuda.is_available()
  found = (f"JAX {jax.default_backend()} {jax.devices()[0].device_kind}; torch "
           f"{torch.cuda.get_device_name(0) if torch_gpu else 'CPU only'}")
  if not (jax_gpu and torch_gpu):
    raise app.UsageError(f"--device_check needs a GPU for both JAX and torch, found {found}; "
                         "install the CUDA builds or drop --device_check")
  return found


def synthetic_input(resolution: int, seed: int) -> np.ndarray:
  """A smooth colour pattern, darkened and slightly noisy: `[1, R, R, 3]` float32 in [0, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
  img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (f * xx + g * yy) + p)
                  for f, g, p in rng.uniform(0.5, 3.0, (3, 3))], axis=-1)
  img = 0.3 * img + 0.02 * rng.standard_normal(img.shape)
  return np.clip(img, 0.0, 1.0)[None].astype(np.float32)


def _stage_timesteps(schedule: Any, config: config_lib.RestoreConfig) -> tuple[int, int]:
  """A stage-1 timestep (the first) and a guided one (the middle of stage 2)."""
  ts = schedule_lib.timesteps(schedule, config.steps)
  guided = ts[(ts < config.stage2_t) & (ts >= config.stage3_t)]
  if not len(guided):
    raise app.UsageError(f"--steps={config.steps} leaves no stage-2 step; use more steps")
  return int(ts[0]), int(guided[len(guided) // 2])


def build_setup(opts: Options) -> Setup:
  """Random SD and VGG weights created in torch and converted to Flax, so both sides share
  them; the lowlight preset (narrower PCDM and discriminators for `tiny`)."""
  start = time.perf_counter()
  arch = sd_lib.TINY if opts.size == "tiny" else sd_lib.SD21_BASE
  resolution = opts.resolution or (64 if opts.size == "tiny" else 512)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.backends.cuda.matmul.allow_tf32 = opts.torch_tf32
  torch.backends.cudnn.allow_tf32 = opts.torch_tf32
  torch.manual_seed(opts.seed)
  unet = diffusers.UNet2DConditionModel(**arch["unet"]).eval().requires_grad_(False)
  vae = diffusers.AutoencoderKL(**arch["vae"]).eval().requires_grad_(False)
  vgg = tr.VGGRelu22().random_init()
  backbone = sd_convert.from_torch(arch, unet, vae, dtype=jnp.dtype(opts.dtype))
  rng = np.random.default_rng(opts.seed)
  shape = (1, arch["text_encoder"]["max_position_embeddings"], arch["unet"]["cross_attention_dim"])
  null, prompt = rng.standard_normal((2,) + shape).astype(np.float32)
  backbone = backbone.replace(null_context=jnp.asarray(null), remat_decode=opts.remat)
  config = config_lib.preset("lowlight", steps=opts.steps, dtype=opts.dtype, remat=opts.remat)
  if opts.size == "tiny":
    config = config.replace(pcdm_features=(16, 32, 64), disc_features=(16, 32, 64))
  scorer = None
  if "dqr" in opts.parts:
    scorer = scorers.arniqa(arniqa_lib.init_random(jax.random.key(opts.seed + 2)))
  models = restore_lib.Models(backbone=backbone, vgg_params=jax.tree.map(jnp.asarray, vgg.flax_params()), scorer=scorer)
  y = synthetic_input(resolution, opts.seed)
  torch_sd = tr.TorchSD(unet.to(device), vae.to(device), dict(arch["scheduler"]),
                        torch.from_numpy(null).to(device),
                        float(arch["vae"].get("scaling_factor", 0.18215)))
  both = torch.from_numpy(np.concatenate([null, prompt])).to(device)
  f = backbone.latent_factor
  t1, t2 = _stage_timesteps(backbone.schedule, config)
  return Setup(
    models=models, config=config, y=jnp.asarray(y), ctx=jnp.asarray(prompt) if opts.cfg else None,
    torch_sd=torch_sd, torch_vgg=vgg.to(device),
    torch_y=torch.from_numpy(y.transpose(0, 3, 1, 2).copy()).to(device),
    torch_ctx=both if opts.cfg else None, torch_cfg_ctx=both, device=device, seed=opts.seed,
    resolution=resolution,
    latent_shape=(1, backbone.latent_channels, resolution // f, resolution // f),
    t_stage1=t1, t_guided=t2, setup_s=time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Timing and memory helpers.


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


def memory(setup: Setup, torch_part: bool) -> dict[str, int]:
  """Peak memory after a part (module docstring): process RSS; device peaks on a GPU."""
  out = {"process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  if torch_part and setup.device.type == "cuda":
    out["torch_peak_bytes"] = int(torch.cuda.max_memory_allocated(setup.device))
  if not torch_part:
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    if peak is not None:
      out["jax_peak_bytes"] = int(peak)
  return out


def stage_counts(setup: Setup, steps: int) -> tuple[int, int]:
  """(steps with t ≥ stage2_t, steps with t < stage2_t) of a `steps`-step schedule."""
  ts = schedule_lib.timesteps(setup.models.backbone.schedule, steps)
  guided = int(np.sum(ts < setup.config.stage2_t))
  return len(ts) - guided, guided


def images_per_minute(step: dict[str, Any], n1: int, n2: int) -> float:
  """Images per minute of the fixed schedule from the per-step times of one batch size."""
  per_image = (n1 * step["step_s_stage1"] + n2 * step["step_s_guided"]) / step["batch"]
  return 60.0 / per_image


# ---------------------------------------------------------------------------------------------
# JAX parts.


def _nchw(x: Any) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def jax_step(setup: Setup, batch: int, timed: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """Compile time and per-step times of our step (`step_at`, jitted with the state donated).

  Returns the result and, for batch 1, a probe for `parity`: the state before and after the
  first (guided) step.
  """
  models, config, ctx = setup.models, setup.config, setup.ctx

  def one(m, y, t, st):
    return step_lib.step_at(m, y, ctx, config, t, st)

  key = jax.random.key(setup.seed)
  if batch == 1:
    fn, y = one, setup.y
    st = state_lib.init(models, y, key, config)
  else:
    fn = jax.vmap(one, in_axes=(None, 0, None, 0))
    y = jnp.broadcast_to(setup.y, (batch,) + setup.y.shape)
    init = jax.vmap(lambda yy, k: state_lib.init(models, yy, k, config))
    st = jax.jit(init)(y, jax.random.split(key, batch))
  st = jax.block_until_ready(st)
  probe = {}
  if batch == 1:
    probe["before"] = jax.device_get({k: getattr(st, k) for k in ("z", "pcdm", "disc", "disc2")})
  t1, t2 = jnp.int32(setup.t_stage1), jnp.int32(setup.t_guided)
  with clock() as c_compile:
    compiled = jax.jit(fn, donate_argnums=(3,)).lower(models, y, t2, st).compile()
  with clock() as c_first:
    st = jax.block_until_ready(compiled(models, y, t2, st))
  if batch == 1:
    probe["after"] = jax.device_get(
      {"z": st.z, "pcdm": st.pcdm, "trace": {k: st.trace[k][0] for k in TRACE_TERMS}})
  times = {}
  for name, t in (("stage1", t1), ("guided", t2)):
    with clock() as c:
      for _ in range(timed):
        st = compiled(models, y, t, st)
      st = jax.block_until_ready(st)
    times[name] = c.seconds / timed
  return {"batch": batch, "compile_s": c_compile.seconds, "first_run_s": c_first.seconds,
          "step_s_stage1": times["stage1"], "step_s_guided": times["guided"],
          "timed_steps": timed, "finite": bool(np.isfinite(np.asarray(st.z)).all())}, probe


def jax_restore(setup: Setup, dqr: bool, steps: int) -> dict[str, Any]:
  """Compile and run time of one `restore` of one image (fixed schedule or DQR)."""
  config = setup.config.replace(steps=steps, dqr=dqr)
  ctx = setup.ctx

  def run(models, y, key):
    res = restore_lib.restore(models, y, key, config, context=ctx)
    return res.image, res.info

  key = jax.random.key(setup.seed + 1)
  with clock() as c_compile:
    compiled = jax.jit(run).lower(setup.models, setup.y[0], key).compile()
  with clock() as c_run:
    image, info = jax.block_until_ready(compiled(setup.models, setup.y[0], key))
  out = {"dqr": dqr, "steps_config": steps, "compile_s": c_compile.seconds,
         "run_s": c_run.seconds, "finite": bool(np.isfinite(np.asarray(image)).all())}
  if dqr:
    out.update(steps_taken=int(info["steps"]), restarts=int(info["restarts"]),
               stop_reason=dqr_lib.STOP_REASONS[int(info["stop_reason"])])
  else:
    out["steps_taken"] = steps
  return out


# ---------------------------------------------------------------------------------------------
# PyTorch parts.


def torch_step(setup: Setup, batch: int, timed: int, warmup: int) -> dict[str, Any]:
  """Warm-up and per-step times (stage 1 and guided) of the torch reference step."""
  if setup.device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(setup.device)
  step = tr.GuidedStep(setup.torch_sd, setup.torch_vgg, setup.config, setup.num_pixels)
  gen = torch.Generator().manual_seed(setup.seed)
  ims = [step.init_image(setup.torch_y,
                         torch.randn(setup.latent_shape, generator=gen).to(setup.device))
         for _ in range(batch)]
  with clock(setup.sync) as c_warm:
    for _ in range(warmup):
      step(ims, setup.t_guided, setup.torch_ctx)
  times = {}
  for name, t in (("stage1", setup.t_stage1), ("guided", setup.t_guided)):
    with clock(setup.sync) as c:
      for _ in range(timed):
        step(ims, t, setup.torch_ctx)
    times[name] = c.seconds / timed
  return {"batch": batch, "warmup_s": c_warm.seconds, "warmup_steps": warmup,
          "step_s_stage1": times["stage1"], "step_s_guided": times["guided"],
          "timed_steps": timed, "finite": bool(torch.isfinite(ims[0].z).all())}


def parity(setup: Setup, probe: dict[str, Any]) -> dict[str, Any]:
  """The first guided step of both sides from the same state, side by side."""
  step = tr.GuidedStep(setup.torch_sd, setup.torch_vgg, setup.config, setup.num_pixels)
  before, after = probe["before"], probe["after"]
  im = step.init_image(setup.torch_y, _nchw(before["z"]).to(setup.device), before)
  (row,) = step([im], setup.t_guided, setup.torch_ctx)
  z_jax = np.asarray(after["z"])
  z_torch = im.z.cpu().numpy().transpose(0, 2, 3, 1)
  k_jax = np.asarray(after["pcdm"]["conv1"]["kernel"])
  k_torch = im.pcdm.convs[0].weight.detach().cpu().numpy().transpose(2, 3, 1, 0)
  k_before = np.asarray(before["pcdm"]["conv1"]["kernel"])
  return {
    "t": setup.t_guided,
    "terms": {k: {"jax": float(after["trace"][k]), "torch": float(row[k])} for k in TRACE_TERMS},
    "z_max_abs_diff": float(np.abs(z_jax - z_torch).max()),
    "z_max_abs": float(np.abs(z_jax).max()),
    "pcdm_conv1_max_abs_diff": float(np.abs(k_jax - k_torch).max()),
    "pcdm_conv1_update_max_abs": float(np.abs(k_jax - k_before).max()),
  }


def torch_ldrps(setup: Setup, scale: float) -> dict[str, Any]:
  """One image through the LD-RPS procedure (step counts times `scale`), timed end to end."""
  if setup.device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(setup.device)
  proc = tr.LDRPSProcedure(setup.torch_sd, setup.torch_vgg, setup.config, setup.num_pixels,
                           setup.torch_cfg_ctx, scale)
  gen = torch.Generator().manual_seed(setup.seed)
  with clock(setup.sync) as c:
    image = proc.run(setup.torch_y, gen)
  full_first, full_rec = tr.ldrps_step_counts(1.0)
  full = full_first + tr.LDRPS_RECURRENCES * full_rec
  return {"scale": scale, "steps": proc.total_steps(), "full_steps": full, "run_s": c.seconds,
          "per_image_s_full": c.seconds * full / proc.total_steps(),
          "finite": bool(torch.isfinite(image).all())}


# ---------------------------------------------------------------------------------------------
# Ratios, targets and the report.


def _get(d: Any, *keys: str) -> Any:
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def compute_ratios(res: dict[str, Any]) -> dict[str, Any]:
  """torch time / JAX time per batch (> 1: JAX faster) and LD-RPS / ours per restored image."""
  ratios: dict[str, Any] = {"step_guided": {}, "step_stage1": {}, "images_per_minute": {}}
  jsteps, tsteps = res["jax"]["steps"], res["torch"]["steps"]
  for b in sorted(set(jsteps) & set(tsteps), key=int):
    for stage in ("guided", "stage1"):
      ratios[f"step_{stage}"][b] = tsteps[b][f"step_s_{stage}"] / jsteps[b][f"step_s_{stage}"]
  jipm, tipm = res["jax"]["images_per_minute"], res["torch"]["images_per_minute"]
  for b in sorted(set(jipm) & set(tipm), key=int):
    ratios["images_per_minute"][b] = jipm[b] / tipm[b]
  ldrps = _get(res, "torch", "ldrps", "per_image_s_full")
  for name in ("dqr", "fixed"):
    ours = _get(res, "jax", f"restore_{name}", "per_image_s_full")
    if ours and ldrps:
      ratios[f"ldrps_vs_restore_{name}"] = ldrps / ours
  return ratios


def _target(name: str, measured: float | None, op: str, threshold: float, unit: str,
            why_not: str = "") -> dict[str, Any]:
  out = {"name": name, "measured": measured, "op": op, "threshold": threshold, "unit": unit}
  if measured is None:
    return {**out, "status": "NOT MEASURED", "why": why_not}
  met = measured >= threshold if op == ">=" else measured < threshold
  return {**out, "status": "MET" if met else "NOT MET"}


def evaluate_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
  """The performance targets, each with its measured value and status (never asserted)."""
  meta = res["meta"]
  gpu = meta["jax_backend"] == "gpu"
  full = meta["size"] == "sd21" and meta["resolution"] == 512
  step = _get(res, "ratios", "step_guided", "1")
  peak = _get(res, "jax", "peak_batch1", "jax_peak_bytes")
  ipm = res["jax"]["images_per_minute"]
  growth = None
  if len(ipm) >= 2:
    values = [ipm[b] for b in sorted(ipm, key=int)]
    growth = min(b / a for a, b in itertools.pairwise(values))
  return [
    _target("guided step at equal work on a CPU: torch time / JAX time",
            None if gpu else step, ">=", 1.0, "x", "not a CPU run, or no step/torch_step part"),
    _target("guided step at equal work on a GPU: torch time / JAX time",
            step if gpu else None, ">=", 2.0, "x", "needs a GPU and the step/torch_step parts"),
    _target("restored image: LD-RPS procedure time / our default (DQR) time",
            _get(res, "ratios", "ldrps_vs_restore_dqr"), ">=", 3.0, "x",
            "needs the dqr and ldrps parts"),
    _target("512x512 restore (DQR, batch 1) on one GPU",
            _get(res, "jax", "restore_dqr", "per_image_s_full") if gpu and full else None,
            "<", 60.0, "s", "needs --size=sd21 at 512 px on a GPU with the dqr part"),
    _target("peak GPU memory of our pipeline at batch 1, 512x512",
            peak / 1e9 if peak and gpu and full else None, "<", 20.0, "GB",
            "needs --size=sd21 at 512 px on a GPU"),
    _target("throughput grows with batch size: min over b of ipm(next b) / ipm(b)",
            growth, ">=", 1.0, "x", "needs the batch part with two or more batch sizes"),
  ]


def print_report(res: dict[str, Any]) -> None:
  """Human-readable summary of `res` on stdout."""
  meta = res["meta"]
  print(f"\n== upzeroir-jax benchmark: size={meta['size']} {meta['resolution']}px "
        f"dtype={meta['dtype']} remat={meta['remat']} cfg={meta['cfg']}; JAX on "
        f"{meta['device']}, torch on {meta['torch_device']}; load average {meta['loadavg']}")
  for side in ("jax", "torch"):
    for b, s in sorted(res[side]["steps"].items(), key=lambda kv: int(kv[0])):
      first = (f"compile {s['compile_s']:.2f} s" if side == "jax"
               else f"warm-up {s['warmup_s']:.2f} s for {s['warmup_steps']} steps")
      print(f"{side:5s} step, batch {b}: guided {s['step_s_guided'] * 1e3:9.1f} ms, stage 1 "
            f"{s['step_s_stage1'] * 1e3:9.1f} ms ({first})")
  for name in ("restore_fixed", "restore_dqr"):
    r = res["jax"].get(name)
    if r:
      print(f"jax   {name}: {r['run_s']:.2f} s for {r['steps_taken']} steps (compile "
            f"{r['compile_s']:.2f} s); per image at {r['steps_full']} steps "
            f"{r['per_image_s_full']:.2f} s")
  r = res["torch"].get("ldrps")
  if r:
    print(f"torch LD-RPS: {r['run_s']:.2f} s for {r['steps']} steps (scale {r['scale']}); "
          f"per image at {r['full_steps']} steps {r['per_image_s_full']:.2f} s")
  for side in ("jax", "torch"):
    ipm = res[side]["images_per_minute"]
    if ipm:
      print(f"{side:5s} images/min: " + ", ".join(f"batch {b}: {v:.3g}" for b, v in ipm.items()))
  if "parity" in res:
    p = res["parity"]
    worst = max(abs(v["jax"] - v["torch"]) / max(abs(v["torch"]), 1e-12)
                for v in p["terms"].values())
    print(f"parity at t={p['t']}: worst relative loss difference {worst:.2e}, max |dz| "
          f"{p['z_max_abs_diff']:.2e} (max |z| {p['z_max_abs']:.2f})")
  print("ratios (torch time / JAX time; > 1 means JAX is faster):")
  print(json.dumps(res["ratios"], indent=1))
  print("memory:", json.dumps(res["memory"], indent=1))
  print("targets:")
  for t in res["targets"]:
    value = "-" if t["measured"] is None else f"{t['measured']:.3g} {t['unit']}"
    why = f" ({t['why']})" if t["status"] == "NOT MEASURED" else ""
    print(f"  [{t['status']}] {t['name']}: {value}, target {t['op']} {t['threshold']} "
          f"{t['unit']}{why}")


# ---------------------------------------------------------------------------------------------


def run_benchmark(opts: Options) -> dict[str, Any]:
  """Runs the selected parts in a fixed order (JAX batch 1, JAX batches, torch) and returns
  the results (the JSON written by `main`)."""
  parts = set(opts.parts)
  setup = build_setup(opts)
  n1, n2 = stage_counts(setup, opts.steps)
  meta = {
    **dataclasses.asdict(opts), "resolution": setup.resolution,
    "restore_steps_run": opts.restore_steps, "stage_counts": {"stage1": n1, "guided": n2},
    "t_stage1": setup.t_stage1, "t_guided": setup.t_guided,
    "jax_backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
    "torch_device": str(setup.device), "jax_version": jax.__version__,
    "torch_version": torch.__version__, "cpu_count": os.cpu_count(),
    "loadavg": [round(x, 2) for x in os.getloadavg()], "platform": platform.platform(),
    "setup_s": setup.setup_s,
    "memory_note": ("GPU: JAX peak_bytes_in_use (never reset: read after the batch-1 parts, "
                    "then after larger batches) and torch max_memory_allocated (reset per "
                    "part); always: the process peak RSS (JAX and torch together, "
                    "never decreasing)"),
  }
  res: dict[str, Any] = {"meta": meta, "jax": {"steps": {}, "images_per_minute": {}},
                         "torch": {"steps": {}, "images_per_minute": {}}, "memory": {}}
  probe = None
  if parts & {"step", "batch"}:
    res["jax"]["steps"]["1"], probe = jax_step(setup, 1, opts.timed_steps)
  for name, dqr in (("restore_fixed", False), ("restore_dqr", True)):
    if ("dqr" if dqr else "restore") in parts:
      logging.info("JAX %s with %d steps", name, opts.restore_steps)
      r = jax_restore(setup, dqr, opts.restore_steps)
      r["steps_full"] = opts.steps
      r["per_image_s_full"] = r["run_s"] * opts.steps / opts.restore_steps
      res["jax"][name] = r
  res["jax"]["peak_batch1"] = res["memory"]["jax_batch1"] = memory(setup, False)
  if "batch" in parts:
    for b in opts.batches:
      if b != 1:
        logging.info("JAX step at batch %d", b)
        res["jax"]["steps"][str(b)], _ = jax_step(setup, b, opts.timed_steps)
      res["memory"][f"jax_batch{b}"] = memory(setup, False)
    res["jax"]["images_per_minute"] = {
      str(b): images_per_minute(res["jax"]["steps"][str(b)], n1, n2) for b in opts.batches}
  if parts & {"torch_step", "torch_batch"}:
    for b in (opts.batches if "torch_batch" in parts else (1,)):
      logging.info("torch step at batch %d", b)
      res["torch"]["steps"][str(b)] = torch_step(setup, b, opts.timed_steps, opts.warmup_steps)
      res["memory"][f"torch_batch{b}"] = memory(setup, True)
    if "torch_batch" in parts:
      res["torch"]["images_per_minute"] = {
        str(b): images_per_minute(res["torch"]["steps"][str(b)], n1, n2) for b in opts.batches}
  if probe and "torch_step" in parts and opts.dtype == "float32":
    res["parity"] = parity(setup, probe)
  if "ldrps" in parts:
    logging.info("LD-RPS procedure at scale %s", opts.ldrps_scale)
    res["torch"]["ldrps"] = torch_ldrps(setup, opts.ldrps_scale)
    res["memory"]["torch_ldrps"] = memory(setup, True)
  res["ratios"] = compute_ratios(res)
  res["targets"] = evaluate_targets(res)
  return res


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _DEVICE_CHECK.value:
    print(check_devices())
  try:
    batches = tuple(sorted({int(b) for b in _BATCHES.value}))
  except ValueError:
    raise app.UsageError(f"--batches must be integers, got {_BATCHES.value}") from None
  opts = Options(size=_SIZE.value, resolution=_RESOLUTION.value, parts=tuple(_PARTS.value),
                 batches=batches, timed_steps=_TIMED_STEPS.value,
                 warmup_steps=_WARMUP_STEPS.value, steps=_STEPS.value,
                 restore_scale=_RESTORE_SCALE.value, ldrps_scale=_LDRPS_SCALE.value,
                 dtype=_DTYPE.value, remat=_REMAT.value, cfg=_CFG.value,
                 torch_tf32=_TF32.value, seed=_SEED.value)
  res = run_benchmark(opts)
  print_report(res)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(res, f, indent=1)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
