"""The Stable Diffusion prior as a model: VAE, UNet and CLIP text encoder (docs/method.md §3).

`SDModel` implements `models.backbone.Backbone`. It is a pytree: parameters are leaves, the
architecture (configs, tokenizer) and settings are static, so a model passes into `jax.jit` as
an argument. Its networks are our own (`unet`, `vae`, `clip_text`, built by `sd_nets`);
`sd` builds and loads models.

Conventions at this boundary: images float32 NHWC in [0, 1] (the VAE sees [−1, 1]); latents
NHWC `[B, H/f, W/f, C]`, already multiplied by the VAE's `scaling_factor`.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax.models import schedule as schedule_lib
from upzeroir_jax.models import sd_layers, sd_nets
from upzeroir_jax.models import vae as vae_lib

Architecture = sd_nets.Architecture
WeightsError = sd_nets.WeightsError


class ShapeError(ValueError):
  """An input whose shape the Stable Diffusion networks cannot take."""


@flax.struct.dataclass
class SDModel:
  """A Stable Diffusion checkpoint as a pytree (implements `models.backbone.Backbone`).

  Attributes:
    unet_params, vae_params, text_params: the three networks' parameters (None if not loaded).
    null_context: [1, L, D] text embedding of the empty prompt (the unconditional context).
    schedule: the DDIM schedule of the checkpoint's scheduler config.
    arch: configs and tokenizer (static).
    remat_decode: decode recomputing activations in the backward pass (less gradient memory).
    dtype: compute dtype of the networks (float32 or bfloat16); outputs are float32.
    attention: `jax.nn.dot_product_attention` implementation of our networks, "xla", "cudnn"
      or None (JAX chooses).
  """

  unet_params: Any
  vae_params: Any
  text_params: Any
  null_context: Any
  schedule: schedule_lib.DDIMSchedule
  arch: Architecture = flax.struct.field(pytree_node=False)
  remat_decode: bool = flax.struct.field(pytree_node=False, default=False)
  dtype: Any = flax.struct.field(pytree_node=False, default=jnp.float32)
  attention: str | None = flax.struct.field(pytree_node=False, default="xla")

  @property
  def policy(self) -> sd_layers.Policy:
    """How our networks compute (`sd_layers.Policy`)."""
    return sd_layers.Policy(self.dtype, self.attention)

  @property
  def latent_factor(self) -> int:
    return 2 ** (len(self.arch.config["vae"]["block_out_channels"]) - 1)

  @property
  def latent_channels(self) -> int:
    return int(self.arch.config["vae"].get("latent_channels", 4))

  @property
  def scaling_factor(self) -> float:
    return float(self.arch.config["vae"].get("scaling_factor", 0.18215))

  @property
  def unet_multiple(self) -> int:
    """Latent sizes must be multiples of this (the UNet's downsampling)."""
    return 2 ** (len(self.arch.config["unet"]["down_block_types"]) - 1)

  @property
  def grid_multiple(self) -> int:
    """Image sides must be multiples of this: the VAE's factor times 8, the latent multiple of
    SD 1.x/2.x UNets (the tiny test UNet needs less but keeps SD's grid)."""
    return 8 * self.latent_factor

  def passes_per_step(self, ctx: Any) -> int:
    """One UNet pass per step without a prompt, two (conditional and unconditional) with one."""
    return 1 if ctx is None else 2

  def configure(self, dtype: Any, remat: bool) -> "SDModel":
    """This model computing in `dtype`, its decoder rematerialised when `remat`."""
    return self.replace(dtype=jnp.dtype(dtype), remat_decode=bool(remat))

  def encode(self, img: jax.Array) -> jax.Array:
    return encode(self, img)

  def decode(self, z: jax.Array) -> jax.Array:
    return decode(self, z)

  def model_output(self, z: jax.Array, t: jax.Array, ctx: Any, cfg_scale: Any) -> jax.Array:
    return model_output(self, z, t, ctx, cfg_scale)


def _check_image(model: SDModel, img: jax.Array) -> None:
  f = model.latent_factor
  if img.ndim != 4 or img.shape[-1] != 3 or img.shape[1] % f or img.shape[2] % f:
    raise ShapeError(f"images must be [B, H, W, 3] with H, W multiples of {f}; got {img.shape}")


def _check_latent(model: SDModel, z: jax.Array, multiple: int) -> None:
  c = model.latent_channels
  if z.ndim != 4 or z.shape[-1] != c or z.shape[1] % multiple or z.shape[2] % multiple:
    raise ShapeError(
      f"latents must be [B, h, w, {c}] with h, w multiples of {multiple}; got {z.shape}"
    )


def encode(model: SDModel, img: jax.Array) -> jax.Array:
  """z = scaling_factor · mean of the VAE posterior q(z | img) (docs/method.md notation, E).

  Args:
    model: the SD model.
    img: [B, H, W, 3] float in [0, 1], H and W multiples of `latent_factor`.

  Returns:
    [B, H/f, W/f, C] float32 latents.
  """
  _check_image(model, img)
  x = (2.0 * img - 1.0).astype(model.dtype)
  vae = model.arch.vae(model.policy)
  moments = vae.apply({"params": model.vae_params}, x, method=vae.encode_moments)
  mean = jnp.split(moments, 2, axis=-1)[0]
  return (mean * model.scaling_factor).astype(jnp.float32)


def decode(model: SDModel, z: jax.Array) -> jax.Array:
  """x = D(z / scaling_factor) mapped from [−1, 1] to [0, 1], not clipped (D of
  docs/method.md).

  With `model.remat_decode`, the decoder runs as a chain of stages (input block, each resnet,
  each upsampler, output head) whose backward pass recomputes each stage from its input: the
  gradient through `decode` (the guidance gradient, docs/method.md §3, Eq. 9–10) then keeps only
  stage
  inputs plus one stage's activations. Same values; reverse mode only (no `jax.jvp`).

  Args:
    model: the SD model.
    z: [B, h, w, C] latents.

  Returns:
    [B, h·f, w·f, 3] float32 image.
  """
  _check_latent(model, z, 1)
  h = (z / model.scaling_factor).astype(model.dtype)
  vae = model.arch.vae(model.policy)
  if model.remat_decode:
    for stage in vae_lib.decoder_stages(vae.config, vae.policy):
      h = _recomputed(stage, model.vae_params, h)
  else:
    h = vae.apply({"params": model.vae_params}, h, method=vae.decode)
  return ((h.astype(jnp.float32) + 1.0) / 2.0).astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recomputed(fn: Any, params: Any, h: jax.Array) -> jax.Array:
  """fn(params, h), not storing its activations: the backward pass recomputes them.

  Unlike `jax.checkpoint`, the recomputation depends on the incoming cotangent (its input is
  h + 0·c for one cotangent entry c), so XLA cannot start every stage's recomputation at the
  beginning of the backward pass: its CPU pipeline drops the optimization barriers that
  `jax.checkpoint` relies on, which left the gradient's peak memory almost unchanged.
  """
  return fn(params, h)


def _recomputed_fwd(fn: Any, params: Any, h: jax.Array) -> tuple[jax.Array, Any]:
  return fn(params, h), (params, h)


def _recomputed_bwd(fn: Any, residuals: Any, cotangent: jax.Array) -> tuple[Any, jax.Array]:
  params, h = residuals
  h = h + 0.0 * cotangent.reshape(-1)[0].astype(h.dtype)
  return jax.vjp(fn, params, h)[1](cotangent)


_recomputed.defvjp(_recomputed_fwd, _recomputed_bwd)


def _unet(model: SDModel, z: jax.Array, t: jax.Array, ctx: jax.Array) -> jax.Array:
  """One UNet pass: z [N, h, w, C], t [N], ctx [N, L, D] -> output [N, h, w, C] float32."""
  out = model.arch.unet(model.policy).apply(
    {"params": model.unet_params}, z.astype(model.dtype), t, ctx.astype(model.dtype))
  return out.astype(jnp.float32)


def model_output(
  model: SDModel, z: jax.Array, t: jax.Array, ctx: jax.Array | None, cfg_scale: Any = 1.0
) -> jax.Array:
  """The UNet's raw prediction (ε or v per `schedule.prediction_type`), docs/method.md §3.

  Without a context, one pass on the empty-prompt embedding. With one, classifier-free
  guidance in one batched pass: out = u + cfg_scale · (c − u) with u the unconditional and c
  the conditional prediction.

  Args:
    model: the SD model.
    z: [B, h, w, C] latents, h and w multiples of `unet_multiple`.
    t: timestep, scalar or [B] integers in [0, T).
    ctx: None, or [P, L, D] prompt embeddings from `text_context` with P = 1 or B.
    cfg_scale: guidance weight (8 in LD-RPS); unused without a context.

  Returns:
    [B, h, w, C] float32.
  """
  _check_latent(model, z, model.unet_multiple)
  b = z.shape[0]
  t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))
  null = jnp.broadcast_to(model.null_context, (b,) + model.null_context.shape[1:])
  if ctx is None:
    return _unet(model, z, t, null)
  if ctx.ndim != 3 or ctx.shape[0] not in (1, b) or ctx.shape[1:] != null.shape[1:]:
    raise ShapeError(f"ctx must be [1 or {b}, {null.shape[1]}, {null.shape[2]}]; got {ctx.shape}")
  cond = jnp.broadcast_to(ctx, null.shape)
  out = _unet(
    model, jnp.concatenate([z, z]), jnp.concatenate([t, t]), jnp.concatenate([null, cond])
  )
  uncond, cond_out = jnp.split(out, 2)
  return uncond + cfg_scale * (cond_out - uncond)


def eps(
  model: SDModel, z: jax.Array, t: jax.Array, ctx: jax.Array | None, cfg_scale: Any = 1.0
) -> jax.Array:
  """ε̂(z_t, t, c): `model_output` (with its guidance), converted from v or x0 where the
  checkpoint predicts those (`schedule.predict`; docs/method.md §3). Shapes as `model_output`."""
  out = model_output(model, z, t, ctx, cfg_scale)
  if model.schedule.prediction_type == "epsilon":
    return out
  return schedule_lib.predict(model.schedule, z, out, jnp.asarray(t))[1]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _embed(arch: Architecture, dtype: Any, params: Any, ids: jax.Array) -> jax.Array:
  text = arch.text(sd_layers.Policy(dtype))
  return text.apply({"params": params}, ids).astype(jnp.float32)


def embed(model: SDModel, ids: np.ndarray) -> jax.Array:
  """The text encoder's last hidden state `[P, L, D]` float32 of token ids `[P, L]`."""
  if model.text_params is None:
    raise WeightsError("this model was built without its text encoder: load all parts")
  return _embed(model.arch, model.dtype, model.text_params, jnp.asarray(ids, jnp.int32))


def text_context(model: SDModel, prompts: str | Sequence[str] | None) -> jax.Array | None:
  """CLIP text embeddings of the prompts (the last hidden state, as SD pipelines use it).

  Host side, outside jit. Returns None when there is no non-empty prompt (the sampler then
  runs one unconditional UNet pass; docs/method.md §3).

  Args:
    model: the SD model.
    prompts: one prompt or one per image.

  Returns:
    [P, L, D] float32 or None.
  """
  prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
  if not any(p.strip() for p in prompts):
    return None
  return embed(model, model.arch.tokenizer.ids(prompts))


def cast(tree: Any, dtype: Any) -> Any:
  """The pytree with its floating-point leaves cast to `dtype`."""

  def cast_leaf(x: jax.Array) -> jax.Array:
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

  return jax.tree.map(cast_leaf, tree)


