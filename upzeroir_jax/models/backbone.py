"""The contract between the sampler and a diffusion backbone.

The sampler (docs/method.md §3) is generic: it needs an autoencoder, a noise predictor and the
DDIM schedule of the forward process (its ᾱ table and prediction type). The pipeline needs the
image grid the backbone accepts, and `restore` the backbone's cost per step and its precision
settings. A backbone is a pytree (a `flax.struct.dataclass`) whose array leaves are its
parameters, so it is passed into `jax.jit` as an argument rather than baked in as a constant,
and whose modules and settings are static fields. Everything specific to one backbone (Stable
Diffusion's grid of 64, its two UNet passes under guidance) lives in its own module.

Shapes: images are float32 NHWC in [0, 1]; latents are NHWC `[B, H/f, W/f, C]` with
`f = latent_factor`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax


class Backbone(Protocol):
  """What the sampler requires of a diffusion backbone."""

  schedule: Any  # models.schedule.DDIMSchedule: ᾱ table, prediction type, spacing.
  latent_factor: int  # image pixels per latent pixel along each spatial axis.
  latent_channels: int
  grid_multiple: int  # image height and width must be positive multiples of this.

  def passes_per_step(self, ctx: Any) -> int:
    """Noise-predictor evaluations one sampling step costs with conditioning `ctx` (None: no
    prompt); counted in the DQR record."""

  def configure(self, dtype: Any, remat: bool) -> Backbone:
    """This backbone computing in `dtype` (e.g. jnp.bfloat16), with its decoder recomputing
    activations in the backward pass when `remat` (where it can; otherwise unchanged)."""

  def encode(self, img: jax.Array) -> jax.Array:
    """[B, H, W, 3] in [0, 1] -> latent [B, H/f, W/f, C] (scaled posterior mean)."""

  def decode(self, z: jax.Array) -> jax.Array:
    """Latent [B, h, w, C] -> image [B, h·f, w·f, 3], nominally in [0, 1] (not clipped)."""

  def model_output(self, z: jax.Array, t: jax.Array, ctx: Any, cfg_scale: float) -> jax.Array:
    """Raw network prediction (ε or v, per `prediction_type`) for latents z at timestep t.

    `ctx` is the conditioning built outside jit (None for no prompt: one unconditional pass);
    with a context, classifier-free guidance with weight `cfg_scale` in one batched call.
    """
