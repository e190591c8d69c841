"""Synthetic degradations: noise, haze, low light and their compositions (docs/method.md §1).

Images are float32 in [0, 1], NHWC `[B, H, W, 3]` or a single `[H, W, 3]`; every operation
clips its result to [0, 1] (docs/method.md §1: "clip after each"). All functions are jit-able; the
random one (`noise`) is deterministic for a PRNG key.

A spec string composes degradations left to right, e.g. `"lowlight:0.3+haze:0.05+noise:0.0588"`.
Each part is `kind:value` with kind one of `noise` (σ), `haze` (β), `lowlight` (α); the value is
a number, a fraction such as `25/255`, or a named intensity `light` / `heavy` (`LEVELS`).
"""

import dataclasses
import math
import types

import jax
import jax.numpy as jnp

AIRLIGHT = 0.5
HAZE_SLOPE = 0.04

# Named intensities of docs/method.md §1 (light, heavy) for each kind.
LEVELS = types.MappingProxyType(
  {
    "noise": types.MappingProxyType({"light": 15 / 255, "heavy": 50 / 255}),
    "haze": types.MappingProxyType({"light": 0.05, "heavy": 0.12}),
    "lowlight": types.MappingProxyType({"light": 0.3, "heavy": 0.1}),
  }
)

# Benchmark sets of docs/method.md §1 / Sec. 5.3 as specs. The mixed sets are applied to LOLv1 low
# inputs, which are already low-light: haze first, then noise.
PRESETS = types.MappingProxyType(
  {
    "kodak24_noise25": "noise:25/255",
    "lol_noise": "noise:light",
    "lol_haze_noise": "haze:light+noise:light",
  }
)


class SpecError(ValueError):
  """A degradation spec string that cannot be parsed; the message names the bad part."""


@dataclasses.dataclass(frozen=True)
class Step:
  """One degradation of a spec: `kind` in LEVELS and its parameter (σ, β or α)."""

  kind: str
  value: float


def _as_image(img: jax.Array) -> jax.Array:
  img = jnp.asarray(img, jnp.float32)
  if img.ndim not in (3, 4) or img.shape[-1] != 3:
    raise ValueError(f"expected an image [H, W, 3] or a batch [B, H, W, 3], got shape {img.shape}")
  return img


def noise(img: jax.Array, sigma: float | jax.Array, key: jax.Array) -> jax.Array:
  """Additive white Gaussian noise, `y = clip(x + σ·N(0, 1))` (docs/method.md §1, Eq. 18).

  Args:
    img: `[B, H, W, 3]` or `[H, W, 3]` in [0, 1].
    sigma: noise standard deviation on the [0, 1] scale (e.g. 25/255).
    key: PRNG key; one independent draw for every pixel of every image.

  Returns:
    The noisy image, same shape, in [0, 1].
  """
  img = _as_image(img)
  return jnp.clip(img + sigma * jax.random.normal(key, img.shape, img.dtype), 0.0, 1.0)


def depth_map(rows: int, cols: int) -> jax.Array:
  """Synthetic depth `d(i, j) = −0.04·‖(i, j) − c‖₂ + s` (docs/method.md §1, Eq. 20),
  `[rows, cols]`.

  `(i, j)` are integer pixel indices from 0, `c = (rows/2, cols/2)` (true division) and
  `s = sqrt(max(rows, cols))`. Largest at the centre; for images above roughly 3000 pixels a
  side it turns negative in the corners (the formula as given; the haze result is clipped).
  """
  i = jnp.arange(rows, dtype=jnp.float32)[:, None] - rows / 2
  j = jnp.arange(cols, dtype=jnp.float32)[None, :] - cols / 2
  return -HAZE_SLOPE * jnp.sqrt(i * i + j * j) + math.sqrt(max(rows, cols))


def haze(img: jax.Array, beta: float | jax.Array, airlight: float = AIRLIGHT) -> jax.Array:
  """Atmospheric scattering haze (docs/method.md §1, Eq. 19–20).

  `t = exp(−β·d)` with `d = depth_map(H, W)`, `y = clip(x·t + A·(1 − t))`, A the global airlight.

  Args:
    img: `[B, H, W, 3]` or `[H, W, 3]` in [0, 1].
    beta: scattering coefficient β (0.05 light, 0.12 heavy).
    airlight: atmospheric light A, the same for every pixel and channel.

  Returns:
    The hazy image, same shape, in [0, 1].
  """
  img = _as_image(img)
  t = jnp.exp(-beta * depth_map(img.shape[-3], img.shape[-2]))[..., None]
  return jnp.clip(img * t + airlight * (1.0 - t), 0.0, 1.0)


def low_light(img: jax.Array, alpha: float | jax.Array) -> jax.Array:
  """Low light by scaling the HSV value channel, `V ← α·V` (docs/method.md §1, Eq. 21).

  With V = max(R, G, B), hue and saturation are ratios that a common factor leaves unchanged,
  so the HSV round trip equals `clip(α·x)` exactly; that is what is computed.

  Args:
    img: `[B, H, W, 3]` or `[H, W, 3]` in [0, 1].
    alpha: brightness factor α > 0 (0.3 light, 0.1 heavy).

  Returns:
    The darkened image, same shape, in [0, 1].
  """
  return jnp.clip(_as_image(img) * alpha, 0.0, 1.0)


def intensity(kind: str, level: str) -> float:
  """The named intensity `level` ("light" or "heavy") of `kind` (docs/method.md §1 table)."""
  if kind not in LEVELS:
    raise SpecError(f"unknown degradation {kind!r}; use one of {', '.join(LEVELS)}")
  if level not in LEVELS[kind]:
    raise SpecError(f"unknown intensity {level!r} for {kind}; use one of {', '.join(LEVELS[kind])}")
  return LEVELS[kind][level]


def _parse_value(kind: str, text: str, part: str) -> float:
  if text in LEVELS[kind]:
    return LEVELS[kind][text]
  try:
    num, _, den = text.partition("/")
    value = float(num) / float(den) if den else float(num)
  except (ValueError, ZeroDivisionError):
    raise SpecError(
      f"bad value in degradation spec part {part!r}: use a number, a fraction like 25/255, "
      f"or one of {', '.join(LEVELS[kind])}"
    ) from None
  if kind == "lowlight" and not (math.isfinite(value) and value > 0):
    raise SpecError(f"degradation spec part {part!r} needs a finite brightness factor > 0")
  if not (math.isfinite(value) and value >= 0):
    raise SpecError(f"degradation spec part {part!r} needs a finite value >= 0")
  return value


def parse(spec: str) -> tuple[Step, ...]:
  """Parses `"kind:value+kind:value"` into steps, in order; a preset name gives its spec.

  Raises:
    SpecError: naming the part that is not `kind:value` with a known kind and a valid value.
  """
  spec = PRESETS.get(spec, spec)
  if not spec.strip():
    raise SpecError("empty degradation spec; use e.g. 'noise:25/255' or 'lowlight:0.3+noise:light'")
  steps = []
  for part in spec.split("+"):
    kind, sep, text = (s.strip() for s in part.partition(":"))
    if not sep or kind not in LEVELS:
      raise SpecError(
        f"bad degradation spec part {part!r}: expected kind:value with kind one of "
        f"{', '.join(LEVELS)}"
      )
    steps.append(Step(kind, _parse_value(kind, text, part)))
  return tuple(steps)


def apply(img: jax.Array, spec: str, key: jax.Array | None = None) -> jax.Array:
  """Applies the degradations of `spec` left to right (docs/method.md §1).

  The k-th step uses `jax.random.fold_in(key, k)`, so a step's noise does not depend on the
  steps before it. Jit with `spec` static (`jax.jit(apply, static_argnames="spec")`).

  Args:
    img: `[B, H, W, 3]` or `[H, W, 3]` in [0, 1].
    spec: e.g. `"lowlight:0.3+haze:0.05+noise:0.0588"` or a name in PRESETS.
    key: PRNG key; required when the spec contains noise.

  Returns:
    The degraded image, same shape, in [0, 1].

  Raises:
    SpecError: on a malformed spec, or noise without a key.
  """
  out = _as_image(img)
  for k, step in enumerate(parse(spec)):
    if step.kind == "noise":
      if key is None:
        raise SpecError(f"degradation spec {spec!r} adds noise and needs a PRNG key")
      out = noise(out, step.value, jax.random.fold_in(key, k))
    elif step.kind == "haze":
      out = haze(out, step.value)
    else:
      out = low_light(out, step.value)
  return out
