"""Restorations with the tiny random Stable Diffusion, shared by test_sampler and test_restore.

Input: kodim23 downscaled to 64×64 (8×8 latents), darkened (low light, α = 0.3); 50 DDIM steps;
PCDM and discriminator widths (16, 32, 64) instead of (64, 128, 256) to keep CPU time small.

- `batch_run`: one batched call, one config per member: the low-light, dehaze and denoise
  presets, low light with s = 4000 applied as is (no s·N/512² reduction, "strong"), and low
  light without guidance (s = 0). With the rule, s_eff = 62.5 moves the tiny random model's
  latents too little to matter; s_eff = 4000 lowers D clearly.
- `single_runs`: single calls with the low-light, mixed and denoise presets, same image and key.

Each run is computed once per test session (cached). Two compiled functions in all (the batch
of five, the single image): presets differ only in their per-task settings, which are traced.
With the strong guidance, batch and single calls drift apart by float rounding, so single calls
are compared with the default-rule members.

`CLI_FLAGS`: the flags of a restoring run of `upzeroir` / `eval.run` with the tiny random SD,
shared by the command-line tests so that they compile one function.
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
STEPS = 50
# s = 4000 without the s·N/512² reduction (N = 64²): 4000·512²/64².
STRONG = 4000.0 * 512**2 / 64**2
BATCH_CONFIGS = tuple(
  config.preset(task, steps=STEPS, **NARROW).replace(**extra)
  for task, extra in (("lowlight", {}), ("dehaze", {}), ("denoise", {}),
                      ("lowlight", {"guidance_scale": STRONG}),
                      ("lowlight", {"guidance_scale": 0.0})))
SINGLE_CONFIGS = (BATCH_CONFIGS[0], BATCH_CONFIGS[0].replace(task="mixed"), BATCH_CONFIGS[2])
KEY_SEED = 3
CLI_FLAGS = ("--model=tiny", "--task=lowlight", "--steps=4", "--size=64", "--scorer=none",
             "--batch=2", "--override=pcdm_features=8,8,8", "--override=disc_features=8,8,8")


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
def single_runs(kodak_dir: pathlib.Path) -> tuple[list[restore.RestoreResult], list[int]]:
  """Single calls with `SINGLE_CONFIGS` (low light, mixed, denoise) on the batch's image and
  key, in that order, and the number of compilations each triggered."""
  y = jnp.asarray(pair(kodak_dir)[1])
  results, compiles = [], []
  for cfg in SINGLE_CONFIGS:
    out, n = _count_compiles(
      lambda cfg=cfg: restore.restore(models(), y, jax.random.key(KEY_SEED), cfg))
    results.append(out)
    compiles.append(n)
  return results, compiles
