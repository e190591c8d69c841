"""PyTorch eager reference of the guided reverse step.

Used by `eval/benchmark.py` (speed) and by the parity test of the benchmark (numbers); the
library never imports it. Everything here is plain PyTorch run eagerly, the way the original
LD-RPS code (ICCV 2025) runs: diffusers' PyTorch `UNet2DConditionModel` and `AutoencoderKL`,
the PCDM and discriminators as `nn.Module`s trained with `torch.optim.Adam`, losses written out,
gradients through `torch.autograd.grad`.

`GuidedStep`: one guided reverse step doing the same work as our JAX step
(`upzeroir_jax.sampler.step.step`): one latent per image, one UNet pass (two, batched, when a
text context is given), one DDIM update, one PCDM/discriminator Adam step, one guidance
gradient through the VAE decoder (and encoder, for DegLoss). docs/method.md §3–§6. The LD-RPS
procedure built from it is `eval.ldrps_reference`.

Images are NCHW float32 in [0, 1] inside this module; `from_nhwc` / `to_nhwc` convert.
"""

import dataclasses
import itertools
import math
from typing import Any

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# Generalized Gaussian statistics (docs/method.md §2, §5).

BETA_MIN = 0.1
BETA_MAX = 10.0
_ALPHA_MIN = 1e-10
_M2_TINY = 1e-30
_LOG_POWER_MAX = 60.0


def _log_rho(beta: torch.Tensor) -> torch.Tensor:
  return 2.0 * torch.lgamma(2.0 / beta) - torch.lgamma(1.0 / beta) - torch.lgamma(3.0 / beta)


def _dlog_rho_dlog_beta(beta: torch.Tensor) -> torch.Tensor:
  return (torch.digamma(1.0 / beta) + 3.0 * torch.digamma(3.0 / beta)
          - 4.0 * torch.digamma(2.0 / beta)) / beta


def ggd_fit(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
  """Moment-matching GGD fit over `dims` (docs/method.md §2), differentiable in x.

  The shape β solves ρ(β) = (E|x|)² / E[x²] by bisection on log β in float64 (no gradient);
  one Newton step from that root carries the implicit-function gradient. α follows in closed
  form. Returns `(alpha, beta)` with `dims` reduced.
  """
  m1 = x.abs().mean(dim=dims)
  m2 = x.square().mean(dim=dims)
  lo_r = math.exp(_log_rho(torch.tensor(BETA_MIN, dtype=torch.float64)).item())
  hi_r = math.exp(_log_rho(torch.tensor(BETA_MAX, dtype=torch.float64)).item())
  log_r = torch.log(torch.clamp(m1.square() / (m2 + _M2_TINY), lo_r, hi_r))
  with torch.no_grad():
    target = log_r.double()
    lo = torch.full_like(target, math.log(BETA_MIN))
    hi = torch.full_like(target, math.log(BETA_MAX))
    for _ in range(60):
      mid = 0.5 * (lo + hi)
      above = _log_rho(torch.exp(mid)) > target
      hi = torch.where(above, mid, hi)
      lo = torch.where(above, lo, mid)
    u0 = (0.5 * (lo + hi)).to(x.dtype)
  beta0 = torch.exp(u0)
  u = u0 - (_log_rho(beta0) - log_r) / _dlog_rho_dlog_beta(beta0)
  beta = torch.exp(u)
  log_alpha = 0.5 * (torch.log(m2 + _M2_TINY) + torch.lgamma(1.0 / beta) - torch.lgamma(3.0 / beta))
  return torch.clamp(torch.exp(log_alpha), min=_ALPHA_MIN), beta


def ggd_kl(a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor,
           b2: torch.Tensor) -> torch.Tensor:
  """KL(GGD(α₁, β₁) ‖ GGD(α₂, β₂)) in the closed form of docs/method.md §5, clipped at 0."""
  a1, a2 = torch.clamp(a1, min=_ALPHA_MIN), torch.clamp(a2, min=_ALPHA_MIN)
  b1, b2 = torch.clamp(b1, BETA_MIN, BETA_MAX), torch.clamp(b2, BETA_MIN, BETA_MAX)
  log_c1 = torch.log(b1) - torch.log(2.0 * a1) - torch.lgamma(1.0 / b1)
  log_c2 = torch.log(b2) - torch.log(2.0 * a2) - torch.lgamma(1.0 / b2)
  log_power = (b2 * torch.log(a1 / a2) + torch.lgamma((b2 + 1.0) / b1) - torch.lgamma(1.0 / b1))
  power = torch.exp(torch.clamp(log_power, max=_LOG_POWER_MAX))
  return torch.clamp(log_c1 - log_c2 + power - 1.0 / b1, min=0.0)


# ---------------------------------------------------------------------------------------------
# Losses (docs/method.md §4–§6).

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGRelu22(nn.Module):
  """torchvision VGG16 `features[:9]` (up to relu2_2) with ImageNet normalisation in front."""

  def __init__(self):
    super().__init__()
    self.features = nn.Sequential(
      nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
      nn.MaxPool2d(2, 2),
      nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU())
    self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    self.requires_grad_(False)

  def forward(self, img: torch.Tensor) -> torch.Tensor:
    return self.features((img - self.mean) / self.std)

  def _convs(self) -> list[tuple[str, nn.Conv2d]]:
    convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
    return list(zip(("conv1_1", "conv1_2", "conv2_1", "conv2_2"), convs))

  def random_init(self) -> "VGGRelu22":
    """torchvision's VGG init: Kaiming-normal (fan-out) kernels, zero biases."""
    for _, conv in self._convs():
      nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
      nn.init.zeros_(conv.bias)
    return self

  def load_jax(self, params: dict) -> "VGGRelu22":
    """Copies `conv1_1 … conv2_2` of our VGG16 params (HWIO kernels) into this module."""
    for name, conv in self._convs():
      _load_conv(conv, params[name])
    return self

  def flax_params(self) -> dict:
    """This module's weights as our VGG16 params (`conv1_1 … conv2_2`, HWIO numpy kernels)."""
    return {name: _conv_params(conv) for name, conv in self._convs()}


def _hwio_to_oihw(kernel: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1)))


def _oihw_to_hwio(weight: torch.Tensor) -> np.ndarray:
  return np.ascontiguousarray(weight.detach().cpu().numpy().transpose(2, 3, 1, 0))


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
  """Mean squared error over all elements."""
  return (a - b).square().mean()


def perceptual(vgg: VGGRelu22, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
  """MSE between relu2_2 features of a and b, one batched VGG pass as LD-RPS's VGGLoss."""
  fa, fb = vgg(torch.cat([a, b])).chunk(2)
  return mse(fa, fb)


def bce(p: torch.Tensor, target: float) -> torch.Tensor:
  """nn.BCELoss (log clamped at −100) of probabilities p against a constant label."""
  return F.binary_cross_entropy(p, torch.full_like(p, target))


def exposure_loss(img: torch.Tensor, patch: int, target: float) -> torch.Tensor:
  """LD-RPS L_exp: mean over patch×patch blocks of (mean grey value − target)² (Eq. 15)."""
  grey = img.mean(dim=1, keepdim=True)
  return (F.avg_pool2d(grey, patch) - target).square().mean()


def color_loss(img: torch.Tensor) -> torch.Tensor:
  """LD-RPS L_color: sqrt(Drg² + Drb² + Dgb²), Dpq = (μp − μq)², averaged over the batch."""
  mr, mg, mb = img.mean(dim=(2, 3)).unbind(1)
  drg, drb, dgb = (mr - mg).square(), (mr - mb).square(), (mb - mg).square()
  return torch.sqrt(drg.square() + drb.square() + dgb.square()).mean()


# ---------------------------------------------------------------------------------------------
# PCDM and discriminators (docs/method.md §4), mirroring upzeroir_jax/models/pcdm.py.


def image_stats(img: torch.Tensor) -> torch.Tensor:
  """[log α, log β] of the per-channel GGD fit of an NCHW image, `[B, 6]`."""
  alpha, beta = ggd_fit(img, (2, 3))
  return torch.cat([alpha.log(), beta.log()], dim=1)


class PCDM(nn.Module):
  """FiLM-conditioned conv net (x̂0, θ) -> ŷ of docs/method.md §4 (Eq. 11), NCHW."""

  def __init__(self, features: tuple[int, ...] = (64, 128, 256), film_hidden: int = 64,
               slope: float = 0.01):
    super().__init__()
    self.features, self.slope = tuple(features), slope
    self.embed = nn.Linear(12, film_hidden)
    self.film = nn.Linear(film_hidden, 2 * sum(features))
    widths = (3,) + self.features
    self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in itertools.pairwise(widths))
    self.head = nn.Conv2d(widths[-1], 3, 1)
    self.w_skip = nn.Parameter(torch.ones(3))

  def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    film = self.film(F.leaky_relu(self.embed(theta), self.slope))
    h, offset = x, 0
    for conv, width in zip(self.convs, self.features):
      gamma = film[:, offset:offset + width, None, None]
      delta = film[:, offset + width:offset + 2 * width, None, None]
      offset += 2 * width
      h = F.leaky_relu(conv(h) * (1.0 + gamma) + delta, self.slope)
    return self.head(h) + x * self.w_skip.view(1, 3, 1, 1)

  def load_jax(self, params: dict) -> "PCDM":
    """Copies our Flax PCDM params into this module."""
    with torch.no_grad():
      for lin, name in ((self.embed, "embed"), (self.film, "film")):
        lin.weight.copy_(torch.from_numpy(np.array(params[name]["kernel"], np.float32).T.copy()))
        lin.bias.copy_(torch.from_numpy(np.array(params[name]["bias"], np.float32)))
      for k, conv in enumerate(self.convs):
        _load_conv(conv, params[f"conv{k + 1}"])
      _load_conv(self.head, params["head"])
      self.w_skip.copy_(torch.from_numpy(np.array(params["w_skip"], np.float32)))
    return self

  def flax_params(self) -> dict:
    """This module's weights in our Flax PCDM layout (numpy), the inverse of `load_jax`."""
    out = {name: {"kernel": lin.weight.detach().cpu().numpy().T.copy(),
                  "bias": lin.bias.detach().cpu().numpy().copy()}
           for lin, name in ((self.embed, "embed"), (self.film, "film"))}
    for k, conv in enumerate(self.convs):
      out[f"conv{k + 1}"] = _conv_params(conv)
    out["head"] = _conv_params(self.head)
    out["w_skip"] = self.w_skip.detach().cpu().numpy().copy()
    return out


class Discriminator(nn.Sequential):
  """Conv(3→64,s2)–LReLU–Conv(64→128,s2)–LReLU–Conv(128→256,s2)–LReLU–Conv1x1(256→1)–sigmoid,
  3×3 kernels with padding 1 (docs/method.md §4, LD-RPS GANLoss); returns probabilities."""

  def __init__(self, features: tuple[int, ...] = (64, 128, 256), slope: float = 0.01):
    layers, cin = [], 3
    for width in features:
      layers += [nn.Conv2d(cin, width, 3, 2, 1), nn.LeakyReLU(slope)]
      cin = width
    super().__init__(*layers, nn.Conv2d(cin, 1, 1), nn.Sigmoid())

  def _convs(self) -> list[tuple[str, nn.Conv2d]]:
    convs = [m for m in self if isinstance(m, nn.Conv2d)]
    return list(zip([f"conv{k + 1}" for k in range(len(convs) - 1)] + ["head"], convs))

  def load_jax(self, params: dict) -> "Discriminator":
    """Copies our Flax discriminator params (`conv1…`, `head`) into this module."""
    for name, conv in self._convs():
      _load_conv(conv, params[name])
    return self

  def flax_params(self) -> dict:
    """This module's weights in our Flax layout (numpy), the inverse of `load_jax`."""
    return {name: _conv_params(conv) for name, conv in self._convs()}


def _conv_params(conv: nn.Conv2d) -> dict:
  return {"kernel": _oihw_to_hwio(conv.weight), "bias": conv.bias.detach().cpu().numpy().copy()}


def _load_conv(conv: nn.Conv2d, p: dict) -> None:
  conv.weight.data.copy_(_hwio_to_oihw(p["kernel"]))
  conv.bias.data.copy_(torch.from_numpy(np.array(p["bias"], np.float32)))


# ---------------------------------------------------------------------------------------------
# Stable Diffusion in PyTorch (diffusers modules) and the DDIM scheduler.


@dataclasses.dataclass
class TorchSD:
  """diffusers' PyTorch UNet and VAE with the SD conventions of docs/method.md (NCHW here).

  Attributes:
    unet: `diffusers.UNet2DConditionModel`.
    vae: `diffusers.AutoencoderKL`.
    scheduler_config: the diffusers scheduler config (a dict) of the checkpoint.
    null_context: `[1, L, D]` the context of the empty prompt (the unconditional pass).
    scaling_factor: latent scale (0.18215 for SD 1.x / 2.x).
  """

  unet: nn.Module
  vae: nn.Module
  scheduler_config: dict
  null_context: torch.Tensor
  scaling_factor: float = 0.18215

  def encode(self, img: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> scaled posterior mean `[B, C, H/8, W/8]`."""
    return self.scaling_factor * self.vae.encode(2.0 * img - 1.0).latent_dist.mean

  def decode(self, z: torch.Tensor) -> torch.Tensor:
    """Latent -> image `[B, 3, H, W]`, nominally in [0, 1] (not clipped)."""
    return (self.vae.decode(z / self.scaling_factor).sample + 1.0) / 2.0

  def model_output(self, z: torch.Tensor, t: int, ctx: torch.Tensor | None,
                   cfg_scale: float) -> torch.Tensor:
    """UNet prediction; with a context `[2, L, D]` (unconditional, prompt) classifier-free
    guidance in one batched call, else one unconditional pass (docs/method.md §3)."""
    if ctx is None:
      ctx = self.null_context.expand(z.shape[0], -1, -1)
      return self.unet(z, t, encoder_hidden_states=ctx).sample
    b = z.shape[0]
    ctx2 = torch.cat([ctx[:1].expand(b, -1, -1), ctx[1:].expand(b, -1, -1)])
    uncond, cond = self.unet(torch.cat([z, z]), t, encoder_hidden_states=ctx2).sample.chunk(2)
    return uncond + cfg_scale * (cond - uncond)

  def scheduler(self, threshold: str = "off", ratio: float = 0.995,
                max_value: float = 100.0) -> diffusers.DDIMScheduler:
    """A fresh DDIM scheduler of this model's config with ẑ0 thresholding `threshold`
    (docs/method.md §3): "off", "divide" (stock diffusers `DDIMScheduler`) or "clamp"
    (`ClampDDIMScheduler`, LD-RPS's), with quantile `ratio` and bound `max_value`."""
    cls = ClampDDIMScheduler if threshold == "clamp" else diffusers.DDIMScheduler
    if threshold == "off":
      return cls.from_config({**self.scheduler_config, "thresholding": False})
    return cls.from_config({**self.scheduler_config, "thresholding": True,
                            "dynamic_thresholding_ratio": ratio, "sample_max_value": max_value})


class ClampDDIMScheduler(diffusers.DDIMScheduler):
  """diffusers' `DDIMScheduler` whose dynamic thresholding clamps x̂0 per sample to ±s,
  s = clamp(quantile(|x̂0|, ratio), 1, sample_max_value), WITHOUT dividing by s: the DDIM
  scheduler LD-RPS bundles (docs/method.md §3)."""

  def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
    flat = sample.float().reshape(sample.shape[0], -1)
    s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
    s = torch.clamp(s, 1.0, self.config.sample_max_value).unsqueeze(1)
    return torch.clamp(flat, -s, s).reshape(sample.shape).to(sample.dtype)


# ---------------------------------------------------------------------------------------------
# The guided step at equal work with upzeroir_jax/sampler/step.py.

GUIDANCE_TERMS = frozenset(("deg", "mse", "per", "adv", "quality"))


@dataclasses.dataclass
class ImageState:
  """One image's state in the PyTorch step (the counterpart of `sampler.state.SamplerState`).

  Tensors are NCHW on the step's device: z `[1, C, h, w]`, y `[1, 3, H, W]`, zy_alpha/zy_beta
  `[1, C]` (GGD fit of E(y)), y_stats `[1, 6]`, y_feats `[1, 128, H/2, W/2]`.
  """

  z: torch.Tensor
  y: torch.Tensor
  pcdm: PCDM
  disc: Discriminator
  disc2: Discriminator
  pcdm_opt: torch.optim.Optimizer
  disc_opt: torch.optim.Optimizer
  disc2_opt: torch.optim.Optimizer
  zy_alpha: torch.Tensor
  zy_beta: torch.Tensor
  y_stats: torch.Tensor
  y_feats: torch.Tensor


class GuidedStep:
  """One guided reverse step for a batch of images, eagerly in PyTorch (docs/method.md §3–§6).

  The same work as our JAX step, in the same order: UNet (CFG batched when a context is
  given), DDIM update with ẑ0 from z_t (thresholded per `config.threshold`), x̂0 = D(ẑ0) with
  graph, one Adam step of the PCDM
  discriminator and of PCDM (Eq. 12), and from t < stage2_t the second discriminator's Adam step
  and the gradient of D(PCDM(x̂0), y) + [t < stage3_t]·Q(x̂0) with respect to ẑ0 (through PCDM,
  its GGD conditioning, E(ŷ) for DegLoss and the decoder). Images share the UNet / VAE calls;
  each has its own PCDM, discriminators and optimizers.

  `config` is a `RestoreConfig` (only its values are read).
  """

  def __init__(self, sd: TorchSD, vgg: VGGRelu22, config: Any, num_pixels: int):
    self.sd, self.vgg, self.config = sd, vgg, config
    scale = config.guidance_scale
    if config.guidance_ref_pixels:
      scale *= num_pixels / config.guidance_ref_pixels
    self.guidance_scale = scale
    self.scheduler = sd.scheduler(config.threshold, config.threshold_ratio, config.threshold_max)
    self.scheduler.set_timesteps(config.steps)

  def init_image(self, y: torch.Tensor, z: torch.Tensor,
                 jax_params: dict | None = None) -> ImageState:
    """An image's state for input y `[1, 3, H, W]` and z_T `[1, C, h, w]`.

    jax_params: optional `{"pcdm", "disc", "disc2"}` Flax params to copy (shared weights with a
    JAX state); else a fresh Kaiming init as LD-RPS.
    """
    c = self.config
    slope = c.leaky_slope
    pcdm = PCDM(c.pcdm_features, slope=slope).to(y.device)
    disc = Discriminator(c.disc_features, slope).to(y.device)
    disc2 = Discriminator(c.disc_features, slope).to(y.device)
    if jax_params is not None:
      pcdm.load_jax(jax_params["pcdm"])
      disc.load_jax(jax_params["disc"])
      disc2.load_jax(jax_params["disc2"])
    else:
      for m in (pcdm, disc, disc2):
        _kaiming_init(m)
      nn.init.zeros_(pcdm.film.weight)
      nn.init.zeros_(pcdm.film.bias)
    with torch.no_grad():
      zy_alpha, zy_beta = ggd_fit(self.sd.encode(y), (2, 3))
      y_feats = self.vgg(y)
    return ImageState(
      z=z, y=y, pcdm=pcdm, disc=disc, disc2=disc2,
      pcdm_opt=torch.optim.Adam(pcdm.parameters(), c.pcdm_lr),
      disc_opt=torch.optim.Adam(disc.parameters(), c.disc_lr),
      disc2_opt=torch.optim.Adam(disc2.parameters(), c.adv_disc_lr),
      zy_alpha=zy_alpha, zy_beta=zy_beta, y_stats=image_stats(y), y_feats=y_feats)

  def update_pcdm(self, im: ImageState, x0: torch.Tensor, theta: torch.Tensor,
                  t: int) -> dict[str, torch.Tensor]:
    """Discriminator then PCDM Adam step on fixed x̂0, θ (docs/method.md §4, Eq. 12)."""
    c = self.config
    y_hat = im.pcdm(x0, theta)
    im.disc_opt.zero_grad()
    p = im.disc(torch.cat([im.y, y_hat.detach()]))
    n = im.y.shape[0]
    d_loss = bce(p[:n], 1.0) + bce(p[n:], 0.0)
    d_loss.backward()
    im.disc_opt.step()
    l_mse = c.pcdm_w_mse * mse(y_hat, x0)
    l_per = c.pcdm_w_per * perceptual(self.vgg, y_hat, x0)
    if t < c.stage2_t:
      l_per = torch.where(l_per <= c.perc_damp_threshold, l_per, c.perc_damp_factor * l_per)
    l_adv = c.pcdm_w_adv * bce(im.disc(y_hat), 1.0)
    loss = l_mse + l_per + l_adv
    im.pcdm_opt.zero_grad()
    loss.backward()
    im.pcdm_opt.step()
    return {"pcdm_loss": loss.detach(), "pcdm_mse": l_mse.detach(), "pcdm_per": l_per.detach(),
            "pcdm_adv": l_adv.detach(), "disc_loss": d_loss.detach()}

  def objective(self, ims: list[ImageState], x0: torch.Tensor, y_hat: torch.Tensor, t: int,
                z_hat: torch.Tensor | None = None, terms: frozenset[str] = GUIDANCE_TERMS
                ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Σ over images of D(ŷ, y) + [t < stage3_t]·Q(x̂0), after the Adv discriminator steps
    (docs/method.md §5–§6). y_hat = PCDM(x̂0) with graph; z_hat = E(ŷ) if already computed.

    terms: the terms computed, a subset of `GUIDANCE_TERMS` ("deg", "mse", "per", "adv",
    "quality" = exposure + colour); the others are 0 and not computed at all (without "adv" the
    Adv discriminator takes no step), as LD-RPS's scripts leave out the terms they zero.
    """
    c = self.config
    if "adv" in terms:
      for i, im in enumerate(ims):
        im.disc2_opt.zero_grad()
        real, fake = (x0[i:i + 1] - y_hat[i:i + 1]).detach(), (x0[i:i + 1] - im.y).detach()
        p = im.disc2(torch.cat([real, fake]))
        (bce(p[:1], 1.0) + bce(p[1:], 0.0)).backward()
        im.disc2_opt.step()
    if "deg" in terms and c.deg_loss == "kl":
      alpha, beta = ggd_fit(self.sd.encode(y_hat) if z_hat is None else z_hat, (2, 3))
    total, rows = 0.0, []
    zero = torch.zeros((), device=x0.device)
    for i, im in enumerate(ims):
      yh, x = y_hat[i:i + 1], x0[i:i + 1]
      row = dict.fromkeys(("deg", "mse", "per", "adv", "quality"), zero)
      if "deg" in terms:
        row["deg"] = c.lambda_deg * (
          ggd_kl(alpha[i:i + 1], beta[i:i + 1], im.zy_alpha, im.zy_beta).mean()
          if c.deg_loss == "kl" else (yh - im.y).abs().mean())
      if "mse" in terms:
        row["mse"] = c.lambda_mse * mse(yh, im.y)
      if "per" in terms:
        row["per"] = c.lambda_per * mse(self.vgg(yh), im.y_feats)
      if "adv" in terms:
        row["adv"] = c.lambda_adv * bce(im.disc2(x - im.y), 1.0)
      row["distance"] = row["deg"] + row["mse"] + row["per"] + row["adv"]
      if "quality" in terms:
        q = (c.w_exp * exposure_loss(x, min(c.exp_patch, x.shape[2], x.shape[3]), c.exp_target)
             + c.w_col * color_loss(x))
        row["quality"] = q if t < c.stage3_t else torch.zeros_like(q)
      total = total + row["distance"] + row["quality"]
      rows.append(row)
    return total, rows

  def __call__(self, ims: list[ImageState], t: int,
               ctx: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
    """Advances every image by one guided step at timestep t; returns each image's loss terms.

    ctx: `[2, L, D]` (unconditional, prompt) contexts for CFG, or None for one pass.
    """
    c = self.config
    z = torch.cat([im.z for im in ims])
    with torch.no_grad():
      out = self.sd.model_output(z, t, ctx, c.cfg_scale)
      res = self.scheduler.step(out, t, z, eta=c.eta)
    z0 = res.pred_original_sample.detach().requires_grad_(True)
    x0 = self.sd.decode(z0)
    theta = torch.cat([image_stats(x0), torch.cat([im.y_stats for im in ims])], dim=1)
    rows = [self.update_pcdm(im, x0[i:i + 1].detach(), theta[i:i + 1].detach(), t)
            for i, im in enumerate(ims)]
    if t < c.stage2_t:
      y_hat = torch.cat([im.pcdm(x0[i:i + 1], theta[i:i + 1]) for i, im in enumerate(ims)])
      total, terms = self.objective(ims, x0, y_hat, t)
      (g_z0,) = torch.autograd.grad(total, z0)
    else:
      g_z0 = torch.zeros_like(z0)
      zero = torch.zeros((), device=z.device)
      terms = [dict.fromkeys(("deg", "mse", "per", "adv", "distance", "quality"), zero)
               for _ in ims]
    z_next = res.prev_sample - self.guidance_scale * g_z0
    for i, im in enumerate(ims):
      im.z = z_next[i:i + 1].detach()
      rows[i].update({k: v.detach() for k, v in terms[i].items()})
      rows[i]["grad_norm"] = g_z0[i].square().sum().sqrt()
      rows[i]["z0"] = z0[i:i + 1].detach()
      rows[i]["x0"] = x0[i:i + 1].detach()
    return rows


def _kaiming_init(module: nn.Module) -> None:
  """LD-RPS init: Kaiming-normal conv kernels, zero biases."""
  for m in module.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight)
      if m.bias is not None:
        m.bias.data.zero_()
