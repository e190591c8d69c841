r"""Speed benchmark: our JAX pipeline against a PyTorch eager reference with the same weights.

One run, one device, one backbone size (`--size=tiny` for a CPU, `--size=sd21` for the
SD-2.1-base architecture on a GPU). Both sides hold the same random weights: the UNet and VAE
are created as diffusers PyTorch modules and converted to Flax, the VGG16 layers likewise, and
PCDM / discriminators start from the same values. Measured, for our JAX pipeline and for the
PyTorch eager reference (`eval/torch_reference.py`):

- compile time (JAX: `lower().compile()` of each function; torch: its warm-up steps),
- time per guided step at equal work, per batch size: a guided stage-2 step (PCDM update and
  the guidance gradient through decoder and encoder) and a stage-1 step (PCDM update only);
  `--repeats` rounds of `--timed_steps` steps each, the best round reported (and the median).
  On a CPU the rounds of JAX and torch alternate, so both see the same background load,
- one-step parity: both sides run the first guided step from the same state; their loss
  terms, latents and PCDM updates are reported side by side (float32 only),
- time per restored image of our `restore` at batch 1, fixed schedule and with DQR,
- the LD-RPS procedure in PyTorch (450 guided steps, then two recurrences of 225 from t ≈ 500,
  two latents per image, CFG always on) per restored image,
- peak memory: on a GPU, JAX `memory_stats()["peak_bytes_in_use"]` (never reset, so read in
  order: after the batch-1 parts, then after larger batches) and torch
  `max_memory_allocated` (reset per part); always the peak resident set size of the whole
  process (`ru_maxrss`: JAX and torch together, never decreasing), read after each part, and
  XLA's `memory_analysis()` of every compiled function (argument, output, temporary bytes),
- images per minute at batch 1, 2, 4, 8 for the fixed `--steps` schedule, from the per-step
  times of each stage: per image (n₁·t₁ + n₂₃·t₂₃) / B, n₁ the stage-1 steps,
- speed variants of our batch-1 step (`--variants`: bf16, remat, CFG, attention through
  `jax.nn.dot_product_attention`), each timed in rounds alternating with the base step,
- with `--profile`, where the time of our batch-1 guided step goes: milliseconds per step by
  model part (UNet, VAE decoder / encoder, VGG16, PCDM, discriminators; forward and backward)
  and the slowest operations, from a `jax.profiler` trace (`eval/step_profile.py`).

It prints the ratios (torch time / JAX time: > 1 means JAX is faster) and each performance
target with its measured value and MET / NOT MET / NOT MEASURED, and writes everything as JSON.

Order: step times at batch 1 (on a GPU torch first, its cached memory released before JAX
compiles) with the parity check, LD-RPS, our restores, larger batches, variants;
`--time_budget_s` skips the parts that would start after the budget, and a part that fails
(say, out of device memory) is recorded under "errors" while the others go on. Results are written after every part, so
an interrupted run leaves what it measured.

Timing: JAX results are waited for with `jax.block_until_ready`, torch work with
`torch.cuda.synchronize()` on a GPU. Compilation and warm-up are excluded from per-step times
and reported separately. No tokenizer, download or file outside the repository is needed: the
empty-prompt context is a random array, and `--cfg` adds a random prompt context (both sides).
Step counts can be scaled down (`--restore_scale`, `--ldrps_scale`); per-image times are then
extrapolated linearly to the full counts, and the scales are recorded in the output.

Examples:
  python eval/benchmark.py --size=tiny --cpu_threads=1 --out=/tmp/bench.json
  python eval/benchmark.py --size=sd21 --device_check --ldrps_scale=0.1 --out=bench.json
"""

import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib
import dataclasses
import functools
import itertools
import json
import platform
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import diffusers
import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import flags
from diffusers.models.attention_flax import FlaxAttention

from eval import step_profile
from eval import torch_reference as tr
from upzeroir_jax import cli
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
ATTENTIONS = ("xla", "cudnn", "auto")
VARIANT_MODIFIERS = ("bfloat16", "remat", "cfg", *ATTENTIONS)
TRACE_TERMS = ("pcdm_loss", "pcdm_mse", "pcdm_per", "pcdm_adv", "disc_loss", "deg", "mse", "per",
               "adv", "distance", "quality", "grad_norm")

PROG = "eval/benchmark.py"
USAGE = f"""\
usage: python {PROG} --size=tiny|sd21 [--out=FILE] [flags]

Times our JAX pipeline against the PyTorch eager reference and the LD-RPS procedure on the same
random weights (no downloads) and prints the performance targets; see the module docstring.
"""


class BenchmarkError(ValueError):
  """Flags or a device the benchmark cannot use; the message says what to change."""


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval/benchmark.py on `fv`."""
  d = functools.partial
  enum, integer, real, lst, boolean, string = (
    d(flags.DEFINE_enum, flag_values=fv), d(flags.DEFINE_integer, flag_values=fv),
    d(flags.DEFINE_float, flag_values=fv), d(flags.DEFINE_list, flag_values=fv),
    d(flags.DEFINE_bool, flag_values=fv), d(flags.DEFINE_string, flag_values=fv))
  enum("size", "tiny", ["tiny", "sd21"], "Backbone: tiny (test-sized SD, for a CPU) or sd21 "
       "(the SD-2.1-base architecture with random weights, for a GPU).")
  integer("resolution", 0, "Image side in pixels, a multiple of 64 (0: 64 tiny, 512 sd21).")
  lst("parts", list(PARTS), f"Parts to run, any of {', '.join(PARTS)}.")
  lst("batches", ["1", "2", "4", "8"], "Batch sizes of the batch / torch_batch parts.")
  integer("timed_steps", 5, "Timed steps per round of a step timing.")
  integer("repeats", 3, "Rounds of each step timing; the best round is reported.")
  integer("warmup_steps", 2, "Untimed torch warm-up steps.")
  integer("steps", 450, "DDIM steps of our restore (config.steps).")
  real("restore_scale", 1.0, "Run our restores with round(scale·steps) steps.")
  real("ldrps_scale", 1.0, "Run LD-RPS with its 450/225/225 steps times this.")
  enum("dtype", "float32", ["float32", "bfloat16"],
       "Compute dtype of our UNet/VAE (PCDM, losses and latents stay float32).")
  boolean("remat", False, "Recompute the decoder in the guidance backward pass.")
  enum("attention", "default", ["default", *ATTENTIONS],
       "UNet attention of our pipeline: diffusers' einsum-softmax (default) or "
       "jax.nn.dot_product_attention with this implementation (auto: JAX chooses).")
  lst("variants", [], "Speed variants of our batch-1 step, timed after the other parts: each "
      f"a '+'-joined set of {', '.join(VARIANT_MODIFIERS)}, e.g. bfloat16,bfloat16+cudnn,remat.")
  boolean("cfg", False, "Random prompt context: CFG on in our pipeline and in the equal-work "
          "torch step (LD-RPS always runs CFG).")
  boolean("torch_tf32", True, "Let torch use TF32 for float32 matmuls and convs on a GPU, as "
          "XLA does by default.")
  integer("cpu_threads", 0, "Threads of torch and XLA on a CPU (0: the libraries' defaults); "
          "1 keeps a shared, loaded machine from oversubscribing its cores.")
  integer("seed", 0, "Seed of weights, inputs and noise.")
  string("out", "", "Write the results as JSON here (after every part).")
  real("time_budget_s", 0.0, "Skip the parts that would start after this many seconds (0: no "
       "limit); they are listed as skipped.")
  boolean("profile", False, "Trace --timed_steps guided steps of our batch-1 step after its "
          "timing and report the time per model part (needs the step part).")
  boolean("device_check", False, "Require a GPU for both JAX and torch; print what they see.")
  boolean("verbose", False, "Show tracebacks.")
  return fv


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
  time_budget_s: float = 0.0
  repeats: int = 3
  cpu_threads: int = 0
  attention: str = "default"
  variants: tuple[str, ...] = ()
  profile: bool = False

  def __post_init__(self):
    unknown = sorted(set(self.parts) - set(PARTS))
    if unknown:
      raise BenchmarkError(f"unknown --parts {unknown}; choose from {', '.join(PARTS)}")
    if not self.batches or min(self.batches) < 1:
      raise BenchmarkError("--batches must be positive integers, e.g. 1,2,4,8")
    if self.timed_steps < 1 or self.repeats < 1 or self.warmup_steps < 0 or self.steps < 2:
      raise BenchmarkError("--timed_steps and --repeats must be >= 1, --warmup_steps >= 0, "
                           "--steps >= 2")
    if not (0 < self.restore_scale <= 1 and 0 < self.ldrps_scale <= 1):
      raise BenchmarkError("--restore_scale and --ldrps_scale must be in (0, 1]")
    for spec in self.variants:
      bad = [m for m in spec.split("+") if m not in VARIANT_MODIFIERS]
      if bad:
        raise BenchmarkError(f"unknown --variants modifier {bad[0]!r} in {spec!r}; use "
                             f"{', '.join(VARIANT_MODIFIERS)} joined by '+'")
    if self.resolution % 64 or self.resolution < 0:
      raise BenchmarkError("--resolution must be a multiple of 64, the model grid of SD "
                           "(0 for the size's default)")

  @property
  def restore_steps(self) -> int:
    """DDIM steps our restores run: `steps` scaled by `restore_scale` (at least 2)."""
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
  prompt: jax.Array
  device: torch.device
  seed: int
  resolution: int
  latent_shape: tuple[int, ...]
  t_stage1: int
  t_guided: int
  setup_s: float
  attention: str = "default"

  def tracing(self) -> contextlib.AbstractContextManager:
    """The context our functions are traced in: the `attention` choice of the UNet."""
    if self.attention == "default":
      return contextlib.nullcontext()
    impl = None if self.attention == "auto" else self.attention
    return flax.linen.intercept_methods(functools.partial(_dot_product_attention, impl))

  @property
  def num_pixels(self) -> int:
    """Pixels of the model-grid image (sets the guidance scale s·N/512², METHOD §3)."""
    return self.resolution * self.resolution

  @property
  def sync(self) -> Callable[[], None]:
    """A barrier for the torch device (a no-op on a CPU)."""
    if self.device.type == "cuda":
      return lambda: torch.cuda.synchronize(self.device)
    return lambda: None


def _dot_product_attention(implementation: str | None, next_fun: Any, args: Any, kwargs: Any,
                           context: Any) -> Any:
  """Flax method interceptor: diffusers' `FlaxAttention` through `jax.nn.dot_product_attention`
  (same projections and scale; dropout is 0 in SD)."""
  m = context.module
  if context.method_name != "__call__" or not isinstance(m, FlaxAttention):
    return next_fun(*args, **kwargs)
  hidden = args[0]
  ctx = kwargs.get("context", args[1] if len(args) > 1 else None)
  ctx = hidden if ctx is None else ctx
  b = hidden.shape[0]
  q, k, v = (proj(x).reshape(b, -1, m.heads, m.dim_head)
             for proj, x in ((m.query, hidden), (m.key, ctx), (m.value, ctx)))
  out = jax.nn.dot_product_attention(q, k, v, scale=m.dim_head**-0.5,
                                     implementation=implementation)
  return m.proj_attn(out.reshape(b, -1, m.heads * m.dim_head))


def check_devices() -> str:
  """A one-line description of the GPU both JAX and torch see; usage error if either has none."""
  jax_gpu = jax.default_backend() == "gpu"
  torch_gpu = torch.cuda.is_available()
  found = (f"JAX {jax.default_backend()} {jax.devices()[0].device_kind}; torch "
           f"{torch.cuda.get_device_name(0) if torch_gpu else 'CPU only'}")
  if not (jax_gpu and torch_gpu):
    raise BenchmarkError(f"--device_check needs a GPU for both JAX and torch, found {found}; "
                         "install the CUDA builds or drop --device_check")
  return found


def set_cpu_threads(n: int) -> None:
  """n intra-op threads for torch and for XLA's CPU backend; call before JAX computes."""
  torch.set_num_threads(n)
  extra = (f"--xla_cpu_multi_thread_eigen={'false' if n == 1 else 'true'} "
           f"intra_op_parallelism_threads={n}")
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {extra}".strip()


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
    raise BenchmarkError(f"--steps={config.steps} leaves no stage-2 step; use more steps")
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
  vgg_params = jax.tree.map(jnp.asarray, vgg.flax_params())
  models = restore_lib.Models(backbone=backbone, vgg_params=vgg_params, scorer=scorer)
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
    torch_ctx=both if opts.cfg else None, torch_cfg_ctx=both, prompt=jnp.asarray(prompt),
    device=device, seed=opts.seed,
    resolution=resolution,
    latent_shape=(1, backbone.latent_channels, resolution // f, resolution // f),
    t_stage1=t1, t_guided=t2, setup_s=time.perf_counter() - start, attention=opts.attention)


def variant_setup(setup: Setup, spec: str) -> Setup:
  """`setup` with the modifiers of a `--variants` entry applied to our pipeline."""
  backbone, config, ctx, attention = (setup.models.backbone, setup.config, setup.ctx,
                                      setup.attention)
  for mod in spec.split("+"):
    if mod == "bfloat16":
      backbone = backbone.replace(unet_params=sd_lib.cast(backbone.unet_params, jnp.bfloat16),
                                  vae_params=sd_lib.cast(backbone.vae_params, jnp.bfloat16),
                                  dtype=jnp.dtype(jnp.bfloat16))
      config = config.replace(dtype="bfloat16")
    elif mod == "remat":
      backbone, config = backbone.replace(remat_decode=True), config.replace(remat=True)
    elif mod == "cfg":
      ctx = setup.prompt
    else:
      attention = mod
  return dataclasses.replace(setup, models=setup.models.replace(backbone=backbone),
                             config=config, ctx=ctx, attention=attention)


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


def memory(setup: Setup) -> dict[str, int]:
  """Peak memory so far (module docstring): process RSS; JAX and torch device peaks on a GPU."""
  out = {"process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  if setup.device.type == "cuda":
    out["torch_peak_bytes"] = int(torch.cuda.max_memory_allocated(setup.device))
  peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  if peak is not None:
    out["jax_peak_bytes"] = int(peak)
  return out


def compiled_memory(compiled: Any) -> dict[str, int]:
  """XLA's memory analysis of a compiled function: argument, output and temporary bytes."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):
    return {}
  if m is None:
    return {}
  names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
           "alias_size_in_bytes")
  return {f"xla_{n}": int(getattr(m, n)) for n in names if hasattr(m, n)}


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


class JaxStepper:
  """Our guided step (`step_at`) at batch B, compiled once with the state donated.

  Construction compiles (`lower().compile()`, timed) and runs the first step at the guided
  timestep; for batch 1 it keeps `probe`, the state before and after that step, for `parity`.
  """

  def __init__(self, setup: Setup, batch: int):
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
    self.probe: dict[str, Any] = {}
    if batch == 1:
      self.probe["before"] = jax.device_get(
        {k: getattr(st, k) for k in ("z", "pcdm", "disc", "disc2")})
    t2 = jnp.int32(setup.t_guided)
    with clock() as c_compile, setup.tracing():
      self.compiled = jax.jit(fn, donate_argnums=(3,)).lower(models, y, t2, st).compile()
    with clock() as c_first:
      st = jax.block_until_ready(self.compiled(models, y, t2, st))
    if batch == 1:
      self.probe["after"] = jax.device_get(
        {"z": st.z, "pcdm": st.pcdm, "disc": st.disc, "disc2": st.disc2,
         "trace": {k: st.trace[k][0] for k in TRACE_TERMS}})
    self.models, self.y, self.st = models, y, st
    self.info = {"batch": batch, "compile_s": c_compile.seconds, "first_run_s": c_first.seconds,
                 **compiled_memory(self.compiled)}

  def run(self, t: int, n: int) -> float:
    """Seconds per step over n chained steps at timestep t (results waited for)."""
    t = jnp.int32(t)
    with clock() as c:
      for _ in range(n):
        self.st = self.compiled(self.models, self.y, t, self.st)
      self.st = jax.block_until_ready(self.st)
    return c.seconds / n

  def finite(self) -> bool:
    return bool(np.isfinite(np.asarray(self.st.z)).all())


def jax_restore(setup: Setup, dqr: bool, steps: int) -> dict[str, Any]:
  """Compile and run time of one `restore` of one image (fixed schedule or DQR)."""
  config = setup.config.replace(steps=steps, dqr=dqr)
  ctx = setup.ctx

  def run(models, y, key):
    res = restore_lib.restore(models, y, key, config, context=ctx)
    return res.image, res.info

  key = jax.random.key(setup.seed + 1)
  with clock() as c_compile, setup.tracing():
    compiled = jax.jit(run).lower(setup.models, setup.y[0], key).compile()
  with clock() as c_run:
    image, info = jax.block_until_ready(compiled(setup.models, setup.y[0], key))
  out = {"dqr": dqr, "steps_config": steps, "compile_s": c_compile.seconds,
         "run_s": c_run.seconds, "finite": bool(np.isfinite(np.asarray(image)).all()),
         **compiled_memory(compiled)}
  if dqr:
    out.update(steps_taken=int(info["steps"]), restarts=int(info["restarts"]),
               stop_reason=dqr_lib.STOP_REASONS[int(info["stop_reason"])])
  else:
    out["steps_taken"] = steps
  return out


# ---------------------------------------------------------------------------------------------
# PyTorch parts.


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
  stepper = JaxStepper(variant_setup(setup, spec), 1)
  times = {n: {"stage1": [], "guided": []} for n in ("base", "variant")}
  for _ in range(opts.repeats):
    _time_rounds(base, setup, opts.timed_steps, times["base"])
    _time_rounds(stepper, setup, opts.timed_steps, times["variant"])
  out = _summary(stepper, times["variant"], opts.timed_steps)
  for stage in ("guided", "stage1"):
    out[f"base_step_s_{stage}"] = min(times["base"][stage])
    out[f"speedup_{stage}"] = out[f"base_step_s_{stage}"] / out[f"step_s_{stage}"]
  return out


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


def torch_ldrps(setup: Setup, scale: float) -> dict[str, Any]:
  """One image through the LD-RPS procedure (step counts times `scale`), timed end to end."""
  if setup.device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(setup.device)
  proc = tr.LDRPSProcedure(setup.torch_sd, setup.torch_vgg, setup.config, setup.num_pixels,
                           setup.torch_cfg_ctx, scale)
  gen = torch.Generator(setup.device).manual_seed(setup.seed)
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
    _target("throughput on one GPU grows with batch size: min over b of ipm(next b) / ipm(b)",
            growth if gpu else None, ">=", 1.0, "x",
            "needs a GPU and the batch part with two or more batch sizes"),
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
  for spec, r in res["jax"].get("variants", {}).items():
    print(f"jax   variant {spec}: guided {r['step_s_guided'] * 1e3:.1f} ms "
          f"({r.get('speedup_guided', float('nan')):.2f}x), stage 1 "
          f"{r['step_s_stage1'] * 1e3:.1f} ms ({r.get('speedup_stage1', float('nan')):.2f}x), "
          f"XLA temp {r.get('xla_temp_size_in_bytes', 0) / 1e9:.2f} GB, compile "
          f"{r['compile_s']:.1f} s")
  prof = res["jax"].get("profile")
  if prof:
    print(f"jax   guided step by part ({prof['matched_ms']:.1f} ms of traced operations per "
          "step): " + ", ".join(f"{k} {v:.1f} ms" for k, v in prof["by_part_ms"].items()))
  if res["errors"]:
    print("errors:", json.dumps(res["errors"], indent=1))
  if "parity" in res:
    p = res["parity"]
    worst = max(abs(v["jax"] - v["torch"]) / max(abs(v["torch"]), 1e-12)
                for v in p["terms"].values())
    print(f"parity at t={p['t']}: worst relative loss difference {worst:.2e}, max |dz| "
          f"{p['z_max_abs_diff']:.2e} (max |z| {p['z_max_abs']:.2f}), PCDM updates agreeing "
          f"{p['pcdm']['agreement']:.1%}")
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


def _finish(res: dict[str, Any], n1: int, n2: int) -> dict[str, Any]:
  """Fills images per minute, ratios and targets from the parts measured so far."""
  for side in ("jax", "torch"):
    res[side]["images_per_minute"] = {
      b: images_per_minute(s, n1, n2) for b, s in sorted(res[side]["steps"].items(),
                                                         key=lambda kv: int(kv[0]))}
  if "1" in res["jax"]["images_per_minute"]:
    res["jax"]["fixed_per_image_s_from_steps"] = 60.0 / res["jax"]["images_per_minute"]["1"]
  res["ratios"] = compute_ratios(res)
  res["targets"] = evaluate_targets(res)
  return res


def run_benchmark(opts: Options,
                  save: Callable[[dict[str, Any]], None] = lambda res: None) -> dict[str, Any]:
  """Runs the selected parts and returns the results (the JSON `main` writes).

  Order: torch first (batch 1, LD-RPS, larger batches), then its cached GPU memory is
  released and JAX runs (batch 1 step with the parity check, restores with DQR and without,
  larger batches). With `opts.time_budget_s`, a part that would start after the budget is
  spent is skipped and listed in `meta["skipped"]`. `save` gets the results after every part.
  """
  start = time.perf_counter()
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
    "setup_s": setup.setup_s, "skipped": [], "complete": False,
    "memory_note": ("GPU: JAX peak_bytes_in_use (never reset: read after the batch-1 parts, "
                    "then after larger batches) and torch max_memory_allocated (reset per "
                    "part); always: the process peak RSS (JAX and torch together, "
                    "never decreasing)"),
  }
  res: dict[str, Any] = {"meta": meta, "jax": {"steps": {}, "images_per_minute": {}},
                         "torch": {"steps": {}, "images_per_minute": {}}, "memory": {},
                         "errors": {}}

  def due(wanted: bool, label: str) -> bool:
    if not wanted:
      return False
    spent = time.perf_counter() - start
    if opts.time_budget_s and spent > opts.time_budget_s:
      meta["skipped"].append(label)
      return False
    print(f"[{spent:6.0f} s] {label}", flush=True)
    return True

  def done() -> None:
    meta["elapsed_s"] = time.perf_counter() - start
    save(_finish(res, n1, n2))

  def batch(b: int, with_jax: bool, with_torch: bool) -> JaxStepper | None:
    try:
      jres, tres, stepper = measure_batch(setup, b, with_jax, with_torch, opts)
    except Exception as e:  # noqa: BLE001 (e.g. out of device memory: keep the other results)
      res["errors"][f"batch{b}"] = _error_line(e)
      return None
    for side, r in (("jax", jres), ("torch", tres)):
      if r is not None:
        res[side]["steps"][str(b)] = r
    res["memory"][f"batch{b}"] = memory(setup)
    return stepper

  want_jax1 = bool(parts & {"step", "batch"})
  want_torch1 = bool(parts & {"torch_step", "torch_batch"})
  base = None
  if due(want_jax1 or want_torch1, "step times at batch 1"):
    base = batch(1, want_jax1, want_torch1)
    if base and "torch_step" in parts and opts.dtype == "float32":
      res["parity"] = parity(setup, base.probe)
    done()
  if due(opts.profile and base is not None, "profile of our guided step"):
    try:
      res["jax"]["profile"] = step_profile.profile(
        lambda: base.run(setup.t_guided, opts.timed_steps), base.compiled.as_text(),
        opts.timed_steps)
    except Exception as e:  # noqa: BLE001 (e.g. no profiler support on the device)
      res["errors"]["profile"] = _error_line(e)
    done()
  elif opts.profile and base is None:
    meta["skipped"].append("profile (needs the step part)")
  if due("ldrps" in parts, f"LD-RPS procedure at scale {opts.ldrps_scale}"):
    res["torch"]["ldrps"] = torch_ldrps(setup, opts.ldrps_scale)
    res["memory"]["torch_ldrps"] = memory(setup)
    done()
  if setup.device.type == "cuda":
    torch.cuda.empty_cache()
  for name, part in (("restore_dqr", "dqr"), ("restore_fixed", "restore")):
    if due(part in parts, f"JAX {name} with {opts.restore_steps} steps"):
      r = jax_restore(setup, part == "dqr", opts.restore_steps)
      r["steps_full"] = opts.steps
      r["per_image_s_full"] = r["run_s"] * opts.steps / opts.restore_steps
      res["jax"][name] = r
      done()
  res["jax"]["peak_batch1"] = res["memory"]["jax_batch1"] = memory(setup)
  for b in opts.batches:
    with_jax, with_torch = "batch" in parts, "torch_batch" in parts
    if b != 1 and due(with_jax or with_torch, f"step times at batch {b}"):
      batch(b, with_jax, with_torch)
      done()
  for spec in opts.variants:
    if due(base is not None, f"variant {spec}"):
      try:
        res["jax"].setdefault("variants", {})[spec] = measure_variant(setup, base, spec, opts)
      except Exception as e:  # noqa: BLE001 (e.g. cudnn attention off a GPU)
        res["errors"][f"variant {spec}"] = _error_line(e)
      done()
    elif base is None and spec not in meta["skipped"]:
      meta["skipped"].append(f"variant {spec} (needs the step part)")
  meta["complete"] = True
  done()
  return res


def _error_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"


def write_json(path: str, res: dict[str, Any]) -> None:
  """Writes `res` to `path` atomically (a partial result survives an interrupted run)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(res, f, indent=1)
  os.replace(tmp, path)


def _main(fv: flags.FlagValues, rest: list[str]) -> int:
  if rest[1:]:
    raise BenchmarkError(f"unexpected arguments: {' '.join(rest[1:])}")
  if fv.cpu_threads > 0:
    set_cpu_threads(fv.cpu_threads)
  if fv.device_check:
    print(check_devices())
  try:
    batches = tuple(sorted({int(b) for b in fv.batches}))
  except ValueError:
    raise BenchmarkError(f"--batches must be integers, got {','.join(fv.batches)}") from None
  opts = Options(size=fv.size, resolution=fv.resolution, parts=tuple(fv.parts), batches=batches,
                 timed_steps=fv.timed_steps, warmup_steps=fv.warmup_steps, steps=fv.steps,
                 restore_scale=fv.restore_scale, ldrps_scale=fv.ldrps_scale, dtype=fv.dtype,
                 remat=fv.remat, cfg=fv.cfg, torch_tf32=fv.torch_tf32, seed=fv.seed,
                 time_budget_s=fv.time_budget_s, repeats=fv.repeats,
                 cpu_threads=fv.cpu_threads, attention=fv.attention,
                 variants=tuple(fv.variants), profile=fv.profile)
  save = functools.partial(write_json, fv.out) if fv.out else (lambda res: None)
  print_report(run_benchmark(opts, save=save))
  if fv.out:
    print(f"wrote {fv.out}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the benchmark with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
