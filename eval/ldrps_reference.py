"""PyTorch eager reference of the LD-RPS procedure, the end-to-end anchor of the benchmark.

`LDRPSProcedure` runs LD-RPS as its per-task scripts run it (`LDRPS_RECIPES`): 450 guided DDIM
steps, then 2 / 0 / 1 recurrences (low light / dehaze / denoise) of 225 steps from t = 500
(img2img strength 0.5), TWO latents per image, classifier-free guidance with weight 8 always on
(two UNet calls of batch 2 per step; the per-image caption for low light, the empty prompt for
the others), the scheduler's `step` called twice per latent (once for z_{t-1}, once more for
x̂0), LD-RPS's dynamic thresholding on (clamp to ±s without dividing by s,
`torch_reference.ClampDDIMScheduler`), and the guidance gradient taken through the decoder of
both latents, with only the guidance terms the task's script computes (no DegLoss; dehaze
without the adversarial term; denoise with the pixel MSE alone). Loss weights and per-task
settings (discriminator learning rates, exposure patch, stage-3 boundary) are those of the
config, docs/method.md §4–§6. Its guided work per latent is `torch_reference.GuidedStep`'s.

Images are NCHW float32 in [0, 1].
"""

import dataclasses
from typing import Any

import torch

from eval.torch_reference import GuidedStep, ImageState, TorchSD, VGGRelu22, image_stats, mse

LDRPS_FIRST_STEPS = 450
LDRPS_STRENGTH = 0.5
LDRPS_LATENTS = 2
LDRPS_THRESHOLD_RATIO = 0.995
LDRPS_THRESHOLD_MAX = 100.0


@dataclasses.dataclass(frozen=True)
class LDRPSRecipe:
  """What LD-RPS's script for one task does (docs/performance.md, "The LD-RPS anchor").

  Attributes:
    recurrences: img2img recurrences after the first pass (the script's `--iter` default).
    terms: the guidance terms its `cond_fn` computes (`GUIDANCE_TERMS` less those it zeroes;
      LD-RPS has no DegLoss).
    prompt: whether the per-image caption reaches the text encoder (the dehaze and denoise
      scripts read it, then encode the empty prompt; CFG with weight 8 runs either way).
  """

  recurrences: int
  terms: frozenset[str]
  prompt: bool


LDRPS_RECIPES = {
  "lowlight": LDRPSRecipe(2, frozenset(("mse", "per", "adv", "quality")), True),
  "dehaze": LDRPSRecipe(0, frozenset(("mse", "per", "quality")), False),
  "denoise": LDRPSRecipe(1, frozenset(("mse",)), False),
}
LDRPS_RECIPES["mixed"] = LDRPS_RECIPES["lowlight"]  # our mixed preset is the low-light row


def ldrps_step_counts(scale: float = 1.0) -> tuple[int, int]:
  """(DDIM steps of the first pass, steps of each recurrence) at `scale` of LD-RPS's 450."""
  n = max(2, round(LDRPS_FIRST_STEPS * scale))
  return n, min(int(n * LDRPS_STRENGTH), n)


def ldrps_total_steps(task: str, scale: float = 1.0) -> int:
  """Guided steps per restored image of LD-RPS's `task` script at `scale` (full: 900 for low
  light, 450 for dehaze, 675 for denoise)."""
  first, recurrence = ldrps_step_counts(scale)
  return first + LDRPS_RECIPES[task].recurrences * recurrence


class LDRPSProcedure:
  """The restoration procedure as LD-RPS's scripts run it, with the losses of docs/method.md
  §4–§6 restricted to the terms its script for `config.task` computes (`LDRPS_RECIPES`).

  Per image: two latents, 450 DDIM steps from pure noise, then the task's recurrences (2 for
  low light, 0 for dehaze, 1 for denoise): re-noise both latents to t ≈ 500 (img2img strength
  0.5 of the 450-step grid) and run the remaining 225 steps again; the image of the first
  latent after the last pass is the output. Every step, for each latent separately, the UNet
  runs on a batch of two (CFG always on, weight `cfg_scale`: the per-image caption for low
  light, the empty prompt for dehaze and denoise, whose scripts discard the caption they
  read) and the scheduler's `step` is called twice (z_{t−1}, then x̂0 from a second call on
  the new latent, exactly as LD-RPS's loop); dynamic thresholding is on as LD-RPS's scheduler
  does it (clamp to ±s, s = clip(quantile(|ẑ0|, 0.995), 1, 100), no division), whatever
  `config.threshold` says. The guidance function then decodes both latents with graph, trains
  PCDM and its discriminator on both, encodes both ŷ (forward only: LD-RPS has no DegLoss),
  and takes the gradient of the first latent's losses (LD-RPS slices its loss terms to
  `[:batch_size]`) back through the decoder; below t = 700 the distance terms are active,
  below `config.stage3_t` also Q. In the first stage LD-RPS still back-propagates (a loss
  times 0), so every step costs the same.

  `scale` < 1 shortens both passes proportionally (for smoke runs); the work per step is
  unchanged.
  """

  def __init__(self, sd: TorchSD, vgg: VGGRelu22, config: Any, num_pixels: int,
               scale: float = 1.0):
    self.sd, self.vgg, self.config = sd, vgg, config
    self.recipe = LDRPS_RECIPES[config.task]
    self.first_steps, self.recurrence_steps = ldrps_step_counts(scale)
    self.step_impl = GuidedStep(sd, vgg, config, num_pixels)
    self.guidance_scale = self.step_impl.guidance_scale
    self.scheduler = sd.scheduler("clamp", LDRPS_THRESHOLD_RATIO, LDRPS_THRESHOLD_MAX)

  def total_steps(self) -> int:
    """Guided steps per restored image."""
    return self.first_steps + self.recipe.recurrences * self.recurrence_steps

  def context(self, prompt_ctx: torch.Tensor | None) -> torch.Tensor:
    """The `[2, L, D]` CFG context of one image: (empty, caption) where the task's script
    uses the caption `prompt_ctx` `[1, L, D]`, else (empty, empty)."""
    null = self.sd.null_context
    cond = prompt_ctx if self.recipe.prompt and prompt_ctx is not None else null
    return torch.cat([null, cond])

  def _cond(self, im: ImageState, z0: torch.Tensor, t: int) -> torch.Tensor:
    """LD-RPS's `cond_fn`: −s·∇ of the first latent's losses with respect to both ẑ0."""
    c = self.config
    x_in = z0.detach().requires_grad_(True)
    x_hq = self.sd.decode(x_in)
    n = x_hq.shape[0]
    theta = torch.cat([image_stats(x_hq), im.y_stats.expand(n, -1)], dim=1)
    self.step_impl.update_pcdm(dataclasses.replace(im, y=im.y.expand(n, -1, -1, -1)),
                               x_hq.detach(), theta.detach(), t)
    x_lq = im.pcdm(x_hq, theta)
    z_lq = self.sd.encode(x_lq)
    if t < c.stage2_t:
      total, _ = self.step_impl.objective([im], x_hq[:1], x_lq[:1], t, z_hat=z_lq[:1],
                                          terms=self.recipe.terms)
    else:
      total = 0.0 * mse(x_lq[:1], im.y)
    (grad,) = torch.autograd.grad(-self.guidance_scale * total, x_in)
    return grad

  def _pass(self, im: ImageState, latents: torch.Tensor, timesteps: torch.Tensor,
            scheduler, ctx: torch.Tensor) -> torch.Tensor:
    c = self.config
    lat = list(latents.split(1))
    for t in timesteps.tolist():
      preds = []
      for k in range(len(lat)):
        with torch.no_grad():
          out = self.sd.model_output(lat[k], t, ctx, c.cfg_scale)
        lat[k] = scheduler.step(out, t, lat[k]).prev_sample
        preds.append(scheduler.step(out, t, lat[k]).pred_original_sample)
      latents = torch.cat(lat) + self._cond(im, torch.cat(preds), t)
      lat = list(latents.split(1))
    return latents

  def run(self, y: torch.Tensor, generator: torch.Generator,
          prompt_ctx: torch.Tensor | None = None) -> torch.Tensor:
    """Restores y `[1, 3, H, W]` in [0, 1] with the caption embedding `prompt_ctx`
    `[1, L, D]` (None: none); returns `[1, 3, H, W]` in [0, 1]."""
    h, w = y.shape[2] // 8, y.shape[3] // 8
    channels = self.sd.unet.config.in_channels
    shape = (LDRPS_LATENTS, channels, h, w)
    ctx = self.context(prompt_ctx)
    latents = torch.randn(shape, generator=generator, device=y.device)
    im = self.step_impl.init_image(y, latents[:1])
    sched = self.scheduler
    sched.set_timesteps(self.first_steps)
    latents = self._pass(im, latents * sched.init_noise_sigma, sched.timesteps, sched, ctx)
    timesteps = sched.timesteps[self.first_steps - self.recurrence_steps:]
    for _ in range(self.recipe.recurrences):
      noise = torch.randn(shape, generator=generator, device=y.device)
      latents = sched.add_noise(latents, noise, timesteps[:1])
      latents = self._pass(im, latents, timesteps, sched, ctx)
    with torch.no_grad():
      return self.sd.decode(latents[:1]).clamp(0.0, 1.0)
