"""Restoration settings: every quantity of docs/method.md §3–§8 as one frozen, hashable record.

`RestoreConfig` is passed to `jax.jit` as a static argument, so it holds only Python scalars,
strings and tuples. `preset(task)` returns the per-task settings (docs/method.md §4 PCDM weights
and discriminator learning rates, §6 Supp. Tab. 6, exposure patch and stage-3 boundary).
Invalid values raise `ConfigError` (a `ValueError`) at construction, naming the field.
"""

import dataclasses
import math
from typing import Any

TASKS = ("lowlight", "dehaze", "denoise", "mixed")
PCDM_VARIANTS = ("pcdm", "resblocks")
DEG_LOSSES = ("kl", "l1")
DTYPES = ("float32", "bfloat16")
THRESHOLDS = ("clamp", "divide", "off")
DQR_OUTPUTS = ("last", "best")

# docs/method.md §4 [LD-RPS]: PCDM training weights (w_mse, w_per, w_adv).
_PCDM_WEIGHTS = {
  "lowlight": (0.02, 0.3, 0.8),
  "dehaze": (0.2, 0.5, 0.2),
  "denoise": (3.0, 0.002, 0.001),
}
# docs/method.md §6, Supp. Tab. 6 [paper]: (λ_deg, λ_mse, λ_per, λ_adv, w_exp, w_col).
_GUIDANCE_WEIGHTS = {
  "lowlight": (1e-5, 1.0, 2e-3, 5e-5, 1e-2, 1e-2),
  "dehaze": (1e-3, 1.0, 5e-3, 5e-5, 1e-2, 1e-3),
  "denoise": (1e-3, 1.0, 5e-4, 5e-5, 1e-5, 1e-5),
}
# docs/method.md §4, §6 [LD-RPS]: (disc_lr, adv_disc_lr, exp_patch, stage3_t).
_TASK_SETTINGS = {
  "lowlight": (1e-3, 4e-5, 32, 100),
  "dehaze": (2e-5, 2e-5, 64, 150),
  "denoise": (1e-4, 1e-3, 64, 100),
}


class ConfigError(ValueError):
  """An invalid `RestoreConfig` value; the message names the field."""


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
  """All settings of one restoration run (docs/method.md §3–§8). Defaults: the low-light row.

  Sampling (§3):
    steps: DDIM steps of the first pass (450 [LD-RPS]).
    eta: DDIM η (0: deterministic DDIM).
    guidance_scale: s of Eq. 9–10 (4000 [paper], tied to SD latents at 512²).
    guidance_ref_pixels: N_ref of the rule s_eff = s·N/N_ref, N the model-grid pixel count
      (§3 [ours]); 0 disables the rescaling (s_eff = s).
    stage2_t / stage3_t: stage boundaries: guidance from t < stage2_t (700), Q from
      t < stage3_t (per task [LD-RPS]: 100; dehaze 150).
    threshold: ẑ0 thresholding right after ẑ0 is formed, with s = clip(quantile(|ẑ0|,
      `threshold_ratio`), 1, `threshold_max`) per image: "clamp" (ẑ0 ← clip(ẑ0, −s, s), LD-RPS's
      scheduler, the default for every task), "divide" (clip(ẑ0, −s, s) / s, stock diffusers'
      `DDIMScheduler`), "off". threshold_ratio / threshold_max: 0.995 and 100 [LD-RPS].
    cfg_scale: classifier-free guidance weight when a prompt is given (8 [LD-RPS]).
    prompt: text prompt; "" means one unconditional UNet pass per step (§3 [ours]). The
      context is built from it outside jit (`models.sd.text_context`) and given to `restore`.
  PCDM (§4):
    pcdm_variant: "pcdm" (GGD-conditioned FiLM convs) or "resblocks" (§8 ablation).
    pcdm_lr: Adam learning rate of PCDM (5e-4 [LD-RPS]).
    disc_lr / adv_disc_lr: Adam learning rates of the PCDM discriminator (§4) and of the Adv
      discriminator (§5), per task [LD-RPS]: low light 1e-3 / 4e-5, dehaze 2e-5 / 2e-5,
      denoise 1e-4 / 1e-3.
    pcdm_w_mse / pcdm_w_per / pcdm_w_adv: PCDM training weights (Eq. 12, per task).
    perc_damp_threshold / perc_damp_factor: from t < stage2_t the PCDM perceptual term x
      becomes `x if x <= threshold else factor·x` (10, 0.2 [LD-RPS]).
    leaky_slope: negative slope of the LeakyReLUs of PCDM and discriminators (0.01, torch's
      `nn.LeakyReLU()` default used by LD-RPS).
    pcdm_features / disc_features: conv widths of PCDM and of both discriminators
      ((64, 128, 256) [docs/method.md §4]; narrower nets for cheap tests and small backbones).
  Guidance (§5–§6, Supp. Tab. 6):
    deg_loss: "kl" (GGD KL on latents, Eq. 13) or "l1" (pixel L1, §8 ablation).
    lambda_deg / lambda_mse / lambda_per / lambda_adv: image-distance weights (Eq. 14).
    w_exp / w_col: quality-term weights (Eq. 15); exp_patch / exp_target: L_exp(patch, 0.5),
      patch per task [LD-RPS]: 32 low light, 64 dehaze and denoise.
  DQR (§7):
    dqr: run the dynamic quality refinement driver (paper: on); dqr_every (k), dqr_tau (τ),
    dqr_t_restart (t_r: early stop only at t <= t_r; unsettled passes re-enter there),
    dqr_max_restarts (re-initiated passes), dqr_gamma (γ of Eq. 17), dqr_output ("last": the
    x̂0 where the run ended, the paper's rule; "best": the best-scored x̂0 seen). A negative τ
    never settles.
  Divergence guard (§3, [ours]):
    guard_ratio: a guided step whose ‖∇ẑ0 L‖ exceeds `guard_ratio` times the smallest one of
      the image's earlier guided steps has diverged (as has any step with a non-finite state).
    guard_recoveries: diverged steps recovered per image (re-initiated from the last finite
      ẑ0); the next one fails the image.
  Compute:
    dtype: backbone compute dtype, "float32" or "bfloat16".
    remat: recompute the decoder's activations in the backward pass (jax.checkpoint).
    task: name of the preset these weights came from (informational, kept in `info`).
  """

  task: str = "lowlight"
  steps: int = 450
  eta: float = 0.0
  guidance_scale: float = 4000.0
  guidance_ref_pixels: int = 512 * 512
  stage2_t: int = 700
  stage3_t: int = _TASK_SETTINGS["lowlight"][3]
  threshold: str = "clamp"
  threshold_ratio: float = 0.995
  threshold_max: float = 100.0
  cfg_scale: float = 8.0
  prompt: str = ""
  pcdm_variant: str = "pcdm"
  pcdm_lr: float = 5e-4
  disc_lr: float = _TASK_SETTINGS["lowlight"][0]
  adv_disc_lr: float = _TASK_SETTINGS["lowlight"][1]
  pcdm_w_mse: float = _PCDM_WEIGHTS["lowlight"][0]
  pcdm_w_per: float = _PCDM_WEIGHTS["lowlight"][1]
  pcdm_w_adv: float = _PCDM_WEIGHTS["lowlight"][2]
  perc_damp_threshold: float = 10.0
  perc_damp_factor: float = 0.2
  leaky_slope: float = 0.01
  pcdm_features: tuple[int, ...] = (64, 128, 256)
  disc_features: tuple[int, ...] = (64, 128, 256)
  deg_loss: str = "kl"
  lambda_deg: float = _GUIDANCE_WEIGHTS["lowlight"][0]
  lambda_mse: float = _GUIDANCE_WEIGHTS["lowlight"][1]
  lambda_per: float = _GUIDANCE_WEIGHTS["lowlight"][2]
  lambda_adv: float = _GUIDANCE_WEIGHTS["lowlight"][3]
  w_exp: float = _GUIDANCE_WEIGHTS["lowlight"][4]
  w_col: float = _GUIDANCE_WEIGHTS["lowlight"][5]
  exp_patch: int = _TASK_SETTINGS["lowlight"][2]
  exp_target: float = 0.5
  dqr: bool = True
  dqr_every: int = 10
  dqr_tau: float = 0.01
  dqr_t_restart: int = 500
  dqr_max_restarts: int = 2
  dqr_gamma: float = 1.0
  dqr_output: str = "last"
  guard_ratio: float = 100.0
  guard_recoveries: int = 2
  dtype: str = "float32"
  remat: bool = False

  def __post_init__(self):
    _check_choice(self, "task", TASKS)
    _check_choice(self, "pcdm_variant", PCDM_VARIANTS)
    _check_choice(self, "deg_loss", DEG_LOSSES)
    _check_choice(self, "dtype", DTYPES)
    _check_choice(self, "threshold", THRESHOLDS)
    _check_choice(self, "dqr_output", DQR_OUTPUTS)
    for name in ("steps", "exp_patch", "dqr_every"):
      _check(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "an int >= 1")
    for name in ("guidance_ref_pixels", "dqr_max_restarts", "guard_recoveries"):
      _check(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 0, "an int >= 0")
    for name in ("stage2_t", "stage3_t", "dqr_t_restart"):
      _check(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 0, "an int >= 0")
    _check(self, "stage3_t", self.stage3_t <= self.stage2_t, f"<= stage2_t ({self.stage2_t})")
    for name in ("pcdm_lr", "disc_lr", "adv_disc_lr", "perc_damp_factor", "dqr_gamma"):
      _check(self, name, _is_real(getattr(self, name)) and getattr(self, name) > 0, "a number > 0")
    for name in ("guidance_scale", "cfg_scale", "pcdm_w_mse", "pcdm_w_per", "pcdm_w_adv",
                 "perc_damp_threshold", "lambda_deg", "lambda_mse", "lambda_per", "lambda_adv",
                 "w_exp", "w_col", "leaky_slope", "eta"):
      _check(self, name, _is_real(getattr(self, name)) and getattr(self, name) >= 0, "a number >= 0")
    _check(self, "eta", self.eta <= 1, "in [0, 1]")
    _check(self, "dqr_tau", _is_real(self.dqr_tau), "a number (< 0: never settles)")
    _check(self, "guard_ratio", _is_real(self.guard_ratio) and self.guard_ratio > 1,
           "a number > 1")
    _check(self, "threshold_ratio", _is_real(self.threshold_ratio)
           and 0 < self.threshold_ratio <= 1, "in (0, 1]")
    _check(self, "threshold_max", _is_real(self.threshold_max) and self.threshold_max >= 1,
           "a number >= 1")
    _check(self, "exp_target", _is_real(self.exp_target) and 0 <= self.exp_target <= 1,
           "in [0, 1]")
    _check(self, "prompt", isinstance(self.prompt, str), "a string")
    for name in ("pcdm_features", "disc_features"):
      v = getattr(self, name)
      _check(self, name, isinstance(v, tuple) and len(v) >= 1
             and all(_is_int(w) and w >= 1 for w in v), "a non-empty tuple of ints >= 1")
    for name in ("dqr", "remat"):
      _check(self, name, isinstance(getattr(self, name), bool), "True or False")

  def replace(self, **changes: Any) -> "RestoreConfig":
    """A copy with `changes` applied (validated like the constructor)."""
    return dataclasses.replace(self, **changes)


def preset(task: str, **overrides: Any) -> RestoreConfig:
  """The per-task settings for `task` (docs/method.md §4 PCDM weights and discriminator learning
  rates, §6 Supp. Tab. 6, exposure patch and stage-3 boundary).

  task: "lowlight", "dehaze", "denoise" or "mixed" (mixed uses the low-light row [ours]).
  overrides: further `RestoreConfig` fields, e.g. `steps=50, dqr=False`.
  """
  if task not in TASKS:
    raise ConfigError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
  row = "lowlight" if task == "mixed" else task
  w_mse, w_per, w_adv = _PCDM_WEIGHTS[row]
  l_deg, l_mse, l_per, l_adv, w_exp, w_col = _GUIDANCE_WEIGHTS[row]
  disc_lr, adv_disc_lr, exp_patch, stage3_t = _TASK_SETTINGS[row]
  fields = {"task": task, "pcdm_w_mse": w_mse, "pcdm_w_per": w_per, "pcdm_w_adv": w_adv,
            "lambda_deg": l_deg, "lambda_mse": l_mse, "lambda_per": l_per,
            "lambda_adv": l_adv, "w_exp": w_exp, "w_col": w_col, "disc_lr": disc_lr,
            "adv_disc_lr": adv_disc_lr, "exp_patch": exp_patch, "stage3_t": stage3_t}
  fields.update(overrides)
  try:
    return RestoreConfig(**fields)
  except TypeError as e:
    raise ConfigError(f"preset({task!r}): {e}") from None


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _check(cfg: RestoreConfig, name: str, ok: bool, want: str) -> None:
  if not ok:
    raise ConfigError(f"RestoreConfig.{name} must be {want}, got {getattr(cfg, name)!r}")


def _check_choice(cfg: RestoreConfig, name: str, choices: tuple[str, ...]) -> None:
  _check(cfg, name, getattr(cfg, name) in choices, "one of " + ", ".join(choices))
