"""The benchmark's options: each defined once, as a field of `Options`, from which the flags of
`eval/benchmark.py` are derived (`define_flags`) and read back (`from_flags`)."""

import dataclasses
import typing
from typing import Any

from absl import flags

PARTS = ("step", "restore", "dqr", "batch", "torch_step", "torch_batch", "ldrps", "nets",
         "step_cost")
LDRPS_TASKS = ("lowlight", "dehaze", "denoise")
# `jax.nn.dot_product_attention` implementations of our networks (`sd_layers.Policy`); "auto":
# JAX chooses.
ATTENTIONS = ("xla", "cudnn", "auto")
VARIANT_MODIFIERS = ("bfloat16", "remat", "cfg", *ATTENTIONS)


class BenchmarkError(ValueError):
  """Flags or a device the benchmark cannot use; the message says what to change."""


def _opt(default: Any, help_text: str, choices: tuple[str, ...] | None = None) -> Any:
  """A field of `Options` with its flag's help text (and, for an enum flag, its choices)."""
  return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


@dataclasses.dataclass(frozen=True)
class Options:
  """What to run; every field is a flag of the same name (its help is the field's metadata)."""

  size: str = _opt("tiny", "Backbone: tiny (test-sized SD, for a CPU) or sd21 (the SD-2.1-base "
                   "architecture with random weights, for a GPU).", ("tiny", "sd21"))
  resolution: int = _opt(0, "Image side in pixels, a multiple of 64 (0: 64 tiny, 512 sd21).")
  parts: tuple[str, ...] = _opt(PARTS, f"Parts to run, any of {', '.join(PARTS)}.")
  batches: tuple[int, ...] = _opt((1, 2, 4, 8), "Batch sizes of the batch / torch_batch parts.")
  restore_batches: tuple[int, ...] = _opt(
    (1, 2, 4, 8), "Batch sizes of the restore part (the compiled fixed-schedule restore).")
  timed_steps: int = _opt(5, "Timed steps per round of a step timing.")
  repeats: int = _opt(3, "Rounds of each step timing; the best round is reported.")
  warmup_steps: int = _opt(2, "Untimed torch warm-up steps.")
  steps: int = _opt(450, "DDIM steps of our restore (config.steps).")
  restore_scale: float = _opt(1.0, "Run our restores with round(scale·steps) steps.")
  ldrps_scale: float = _opt(1.0, "Run LD-RPS with its 450-step pass and 225-step recurrences "
                            "times this.")
  ldrps_tasks: tuple[str, ...] = _opt(
    LDRPS_TASKS, "Tasks of the ldrps part, each with its script's recipe (recurrences, terms, "
    f"prompt), any of {', '.join(LDRPS_TASKS)}.")
  dtype: str = _opt("float32", "Compute dtype of our UNet/VAE (PCDM, losses and latents stay "
                    "float32).", ("float32", "bfloat16"))
  remat: bool = _opt(False, "Recompute the decoder in the guidance backward pass.")
  attention: str = _opt("xla", "Attention of our UNet, VAE and text encoder: the "
                        "jax.nn.dot_product_attention implementation (auto: JAX chooses).",
                        ATTENTIONS)
  variants: tuple[str, ...] = _opt(
    (), "Speed variants of our batch-1 step, timed after the other parts: each a '+'-joined "
    f"set of {', '.join(VARIANT_MODIFIERS)}, e.g. bfloat16,bfloat16+cudnn,remat.")
  cfg: bool = _opt(False, "Random prompt context: CFG on in our pipeline and in the equal-work "
                   "torch step (LD-RPS always runs CFG).")
  torch_tf32: bool = _opt(True, "Let torch use TF32 for float32 matmuls and convs on a GPU, as "
                          "XLA does by default.")
  cpu_threads: int = _opt(0, "Threads of torch and XLA on a CPU (0: the libraries' defaults); "
                          "1 keeps a shared, loaded machine from oversubscribing its cores.")
  seed: int = _opt(0, "Seed of weights, inputs and noise.")
  out: str = _opt("", "Write the results as JSON here (after every part).")
  time_budget_s: float = _opt(0.0, "Skip the parts that would start after this many seconds "
                              "(0: no limit); they are listed as skipped.")
  profile: bool = _opt(False, "Trace --timed_steps guided steps of our batch-1 step after its "
                       "timing and report the time per model part (needs the step part).")
  device_check: bool = _opt(False, "Require a GPU for both JAX and torch; print what they see.")
  verbose: bool = _opt(False, "Show tracebacks.")

  def __post_init__(self):
    unknown = sorted(set(self.parts) - set(PARTS))
    if unknown:
      raise BenchmarkError(f"unknown --parts {unknown}; choose from {', '.join(PARTS)}")
    bad_tasks = sorted(set(self.ldrps_tasks) - set(LDRPS_TASKS))
    if bad_tasks or not self.ldrps_tasks:
      raise BenchmarkError(f"--ldrps_tasks must be among {', '.join(LDRPS_TASKS)}, got "
                           f"{','.join(self.ldrps_tasks)}")
    for name in ("batches", "restore_batches"):
      if not getattr(self, name) or min(getattr(self, name)) < 1:
        raise BenchmarkError(f"--{name} must be positive integers, e.g. 1,2,4,8")
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


def _element_type(field: dataclasses.Field) -> type | None:
  """The element type of a `tuple[X, ...]` field, None for a scalar field."""
  if typing.get_origin(field.type) is tuple:
    return typing.get_args(field.type)[0]
  return None


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """One flag on `fv` per field of `Options`, with the field's default and help."""
  for f in dataclasses.fields(Options):
    help_text, choices = f.metadata["help"], f.metadata["choices"]
    if _element_type(f) is not None:
      flags.DEFINE_list(f.name, [str(v) for v in f.default], help_text, flag_values=fv)
    elif choices:
      flags.DEFINE_enum(f.name, f.default, list(choices), help_text, flag_values=fv)
    else:
      define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
                str: flags.DEFINE_string}[f.type]
      define(f.name, f.default, help_text, flag_values=fv)
  return fv


def from_flags(fv: flags.FlagValues) -> Options:
  """The `Options` of parsed flags; integer lists are sorted and made unique."""
  values = {}
  for f in dataclasses.fields(Options):
    value, element = fv[f.name].value, _element_type(f)
    if element is int:
      try:
        value = tuple(sorted({int(v) for v in value}))
      except ValueError:
        raise BenchmarkError(f"--{f.name} must be integers, got {','.join(value)}") from None
    elif element is not None:
      value = tuple(value)
    values[f.name] = value
  return Options(**values)

