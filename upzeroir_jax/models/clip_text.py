"""The CLIP text encoder of Stable Diffusion (transformers' `CLIPTextModel`), Flax linen.

SD 1.x uses CLIP ViT-L/14's text tower (quick-GELU); SD 2.x the OpenCLIP ViT-H/14 text tower
as diffusers' SD-2 folders store it (transformers' layout, GELU, 23 of its 24 layers, i.e.
the penultimate layer's output). `CLIPText.apply({"params": p}, ids)`: token ids `[B, L]` ->
last hidden state `[B, L, D]` (after the final LayerNorm), as SD pipelines use it. Pre-LN
transformer layers with causal self-attention; no padding mask (SD's pipelines pass none).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from upzeroir_jax.models import sd_layers
from upzeroir_jax.models.sd_layers import Dense, LayerNorm, Policy

_ACTIVATIONS = {
  "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The fields of a transformers `CLIPTextConfig` the encoder uses (transformers' defaults)."""

  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  @classmethod
  def from_dict(cls, cfg: dict[str, Any]) -> "TextConfig":
    """From a transformers `CLIPTextConfig` dict."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in cfg.items() if k in fields})


class EncoderLayer(nn.Module):
  """x + attn(LN(x)), then x + MLP(LN(x)) (`encoder.layers.i`)."""

  config: TextConfig
  policy: Policy

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, dt = self.config, self.policy.dtype
    d = cfg.hidden_size
    h = LayerNorm(cfg.layer_norm_eps, dt, name="layer_norm1")(x)
    q, k, v = (Dense(d, dtype=dt, name=f"self_attn_{n}_proj")(h) for n in "qkv")
    attn = sd_layers.attention(q, k, v, cfg.num_attention_heads, self.policy, causal=True)
    x = x + Dense(d, dtype=dt, name="self_attn_out_proj")(attn)
    h = LayerNorm(cfg.layer_norm_eps, dt, name="layer_norm2")(x)
    h = _ACTIVATIONS[cfg.hidden_act](Dense(cfg.intermediate_size, dtype=dt, name="mlp_fc1")(h))
    return x + Dense(d, dtype=dt, name="mlp_fc2")(h)


class CLIPText(nn.Module):
  """Token ids `[B, L]` (L ≤ max_position_embeddings) -> hidden states `[B, L, hidden_size]`."""

  config: TextConfig
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    cfg, dt = self.config, self.policy.dtype
    init = nn.initializers.normal(0.02)
    tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init,
                      name="embeddings_token_embedding")
    positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init,
                         name="embeddings_position_embedding")
    x = (tokens(ids) + positions(jnp.arange(ids.shape[1]))[None]).astype(dt)
    layer = sd_layers.remat(EncoderLayer, self.policy)
    for i in range(cfg.num_hidden_layers):
      x = layer(cfg, self.policy, name=f"encoder_layers_{i}")(x)
    return LayerNorm(cfg.layer_norm_eps, dt, name="final_layer_norm")(x)
