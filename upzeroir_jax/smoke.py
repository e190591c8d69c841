"""`--model=tiny`: a smoke test of the whole pipeline on random weights, with small defaults.

The tiny random Stable Diffusion (`models.sd.tiny`) runs every part of a restoration — reading,
the model grid, PCDM fitting, guidance, writing outputs and sidecars — in about a minute or two
of CPU time (docs/usage.md has the measured cost), because `--model=tiny` brings its own
defaults for the flags that set the cost: `DEFAULTS` (grid side, steps, scorer) and `OVERRIDES` (narrow PCDM and
discriminators). Each applies only where the user did not set it, so any of them can still be changed
(`--model=tiny --steps=50`, `--override=pcdm_features=64,128,256`). The outputs are not
restorations.
"""

from __future__ import annotations

from typing import Any

from absl import flags

from upzeroir_jax.loading import SMOKE_TEST_MODEL

DEFAULTS = {"size": 64, "steps": 10, "scorer": "none"}
OVERRIDES = {"pcdm_features": "16,16,16", "disc_features": "16,16,16"}
COST = "about 1.5 CPU-minutes the first time (it compiles) and half a minute once compiled"


def describe() -> str:
  """The tiny defaults as flags, for `--help`."""
  given = [f"--{k}={v}" for k, v in DEFAULTS.items()]
  given += [f"--override={k}={v}" for k, v in OVERRIDES.items()]
  return " ".join(given)


def apply_defaults(fv: flags.FlagValues) -> dict[str, Any]:
  """With `--model=tiny`, gives each `DEFAULTS` flag and `OVERRIDES` field the user did not
  set its smoke-test value (in `fv`, which must define `model`, `override` and the `DEFAULTS`
  flags it has). Returns what was set, {} for other models."""
  if fv["model"].value != SMOKE_TEST_MODEL:
    return {}
  changed: dict[str, Any] = {}
  for name, value in DEFAULTS.items():
    if name in fv and not fv[name].present:
      fv[name].value = value
      changed[name] = value
  given = {item.partition("=")[0].strip() for item in fv["override"].value or []}
  extra = [f"{k}={v}" for k, v in OVERRIDES.items() if k not in given]
  if extra:
    fv["override"].value = extra + list(fv["override"].value or [])
    changed["override"] = extra
  return changed
