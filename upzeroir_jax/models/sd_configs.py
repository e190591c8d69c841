"""Stable Diffusion architectures as diffusers / transformers config dicts.

Each config has the keys "unet" (diffusers `UNet2DConditionModel`), "vae" (`AutoencoderKL`),
"text_encoder" (transformers `CLIPTextConfig`) and "scheduler" (`scheduler_config.json`), in the
form a diffusers checkpoint folder stores them, so the same dict builds the PyTorch reference
networks in tests and our Flax ones.
"""

_SD_SCHEDULER = {
  "beta_start": 0.00085,
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "num_train_timesteps": 1000,
  "steps_offset": 1,
  "set_alpha_to_one": False,
  "clip_sample": False,
  "prediction_type": "epsilon",
}

# The tiny tokenizer's vocabulary: 2 × 256 byte symbols, then the two special tokens.
TINY_VOCAB_SIZE = 514
TINY_BOS, TINY_EOS = 512, 513

# A randomly initialised SD small enough for CPU tests: VAE with SD's factor 8, a two-level
# UNet, a two-layer CLIP text encoder (SD 1.x style: quick_gelu, non-linear projections).
TINY = {
  "unet": {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "cross_attention_dim": 32,
    "norm_num_groups": 32,
  },
  "vae": {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
    "scaling_factor": 0.18215,
  },
  "text_encoder": {
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 16,
    "hidden_act": "quick_gelu",
    "bos_token_id": TINY_BOS,
    "eos_token_id": TINY_EOS,
    "pad_token_id": TINY_EOS,
  },
  "scheduler": _SD_SCHEDULER,
}

# SD 2.x style, tiny: three UNet levels with linear projections and per-level heads, a
# three-level VAE (factor 4), gelu CLIP, v-prediction.
TINY_V = {
  "unet": {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "attention_head_dim": [2, 4, 4],
    "cross_attention_dim": 48,
    "use_linear_projection": True,
    "norm_num_groups": 32,
  },
  "vae": {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
    "scaling_factor": 0.5,
  },
  "text_encoder": {
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 16,
    "hidden_act": "gelu",
    "bos_token_id": TINY_BOS,
    "eos_token_id": TINY_EOS,
    "pad_token_id": TINY_EOS,
  },
  "scheduler": {**_SD_SCHEDULER, "prediction_type": "v_prediction"},
}

# stabilityai/stable-diffusion-2-1-base (its config.json files), for random-weight benchmarks.
SD21_BASE = {
  "unet": {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": [
      "CrossAttnDownBlock2D",
      "CrossAttnDownBlock2D",
      "CrossAttnDownBlock2D",
      "DownBlock2D",
    ],
    "up_block_types": [
      "UpBlock2D",
      "CrossAttnUpBlock2D",
      "CrossAttnUpBlock2D",
      "CrossAttnUpBlock2D",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
  },
  "vae": {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 768,
    "scaling_factor": 0.18215,
  },
  "text_encoder": {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 512,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
  },
  "scheduler": _SD_SCHEDULER,
}

# runwayml/stable-diffusion-v1-5 (its config.json files): CLIP ViT-L/14 text encoder, 8 heads
# per level, convolutional projections; the VAE of SD 2.1-base.
SD15 = {
  "unet": {
    **SD21_BASE["unet"],
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "use_linear_projection": False,
  },
  "vae": SD21_BASE["vae"],
  "text_encoder": {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
  },
  "scheduler": _SD_SCHEDULER,
}
