"""Restorations with the tiny random Stable Diffusion, shared by test_sampler and test_restore.

Input: kodim23 downscaled to 64×64 (8×8 latents), darkened (low light, α = 0.3). PCDM and
discriminator widths (16, 32, 64) instead of (64, 128, 256) to keep CPU time small.

- `batch_run`: 50 steps, one batched call with the low-light, dehaze and denoise presets and
  low light without guidance. Guidance s = 4000 applied as is (`guidance_ref_pixels` = 64², no
  s·N/512² reduction): with the rule, s_eff = 62.5 moves the tiny random model's latents too
  little to matter (D at the last step 0.0495 guided vs 0.0475 unguided in one run); with
  s_eff = 4000 it halved D (0.0226 vs 0.0465).
- `short_runs`: 10 steps, default guidance rule, single calls and one batch of two. With the
  strong guidance above, batch and single calls drift apart by float rounding (up to 8e-4
  after 10 steps, 2e-2 after 50); with the default rule they agree to 1e-5.

Each run is computed once per test session (cached); three compiled functions in all (the
50-step batch of four, the 10-step single image, the 10-step batch of two), since presets
differ only in their loss weights, which are traced values.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from upzeroir_jax import config, restore
from upzeroir_jax.models import sd, vgg
from upzeroir_jax.physics import degrade

NARROW = {"pcdm_features": (16, 32, 64), "disc_features": (16, 32, 64), "dqr": False}
# 50 steps, s = 4000 without the s·N/512² reduction, one preset per batch member.
BATCH_CONFIGS = tuple(
  config.preset(task, steps=50, guidance_ref_pixels=64 * 64, **NARROW).replace(**extra)
  for task, extra in (("lowlight", {}), ("dehaze", {}), ("denoise", {}),
                      ("lowlight", {"guidance_scale": 0.0})))
# 10 steps, the default s·N/512² rule.
SHORT = config.preset("lowlight", steps=10, **NARROW)
KEY_SEED = 3


@functools.cache
def models() -> restore.Models:
  return restore.Models(backbone=sd.tiny(jax.random.key(0)),
                        vgg_params=vgg.init_random(jax.random.key(1)))


@functools.cache
def pair(kodak_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(clean x, low-light y), each [64, 64, 3] float32."""
  img = Image.open(kodak_dir / "kodim23.png").convert("RGB").resize((64, 64), Image.LANCZOS)
  x = np.asarray(img, np.float32) / 255.0
  return x, np.asarray(degrade.low_light(jnp.asarray(x), 0.3))


@functools.cache
def batch_run(kodak_dir: pathlib.Path) -> restore.RestoreResult:
  """One batched call: `BATCH_CONFIGS` per image, the low-light image and one key for all."""
  y = jnp.broadcast_to(jnp.asarray(pair(kodak_dir)[1]), (len(BATCH_CONFIGS), 64, 64, 3))
  keys = jnp.stack([jax.random.key(KEY_SEED)] * len(BATCH_CONFIGS))
  return restore.restore(models(), y, keys, BATCH_CONFIGS)


def _count_compiles(fn):
  """(fn(), number of XLA compilations it triggered) via jax.monitoring's compile event."""
  events = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    out = fn()
    jax.block_until_ready(out.image)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return out, len(events)


@functools.cache
def short_runs(kodak_dir: pathlib.Path) -> dict:
  """10-step runs of the low-light image a and the clean image b with keys split(key, 2).

  Returns a dict: "a", "b", "a_mixed" (a again, with the "mixed" preset: the same weights),
  single calls in that order, their compile counts "compiles", and "batch", one call on [a, b].
  """
  x, y = pair(kodak_dir)
  images = jnp.stack([jnp.asarray(y), jnp.asarray(x)])
  keys = jax.random.split(jax.random.key(KEY_SEED), 2)
  mixed = SHORT.replace(task="mixed")
  out = {"compiles": []}
  for name, b, cfg in (("a", 0, SHORT), ("b", 1, SHORT), ("a_mixed", 0, mixed)):
    out[name], n = _count_compiles(
      lambda b=b, cfg=cfg: restore.restore(models(), images[b], keys[b], cfg))
    out["compiles"].append(n)
  out["batch"] = restore.restore(models(), images, keys, SHORT)
  return out
