"""How one image's sampling went, as its sidecar records it: the "dqr" record (docs/method.md
§7) and the divergence guard's "guard" record (docs/method.md §3), from `restore`'s info."""

import numpy as np

from upzeroir_jax import config as config_lib
from upzeroir_jax.sampler import state as state_lib


def dqr(info: dict[str, np.ndarray], config: config_lib.RestoreConfig) -> dict:
  """The sidecar's "dqr" record of one image: whether DQR ran and, when it did, its info
  (docs/method.md §7); without DQR the fixed pass's step count."""
  if not config.dqr:
    return {"enabled": False, "steps": config.steps}
  from upzeroir_jax.sampler import dqr

  checks = int(info["checks"])
  return {
    "enabled": True,
    "steps": int(info["steps"]),
    "unet_evals": int(info["unet_evals"]),
    "restarts": int(info["restarts"]),
    "stop_reason": dqr.STOP_REASONS[int(info["stop_reason"])],
    "stop_t": int(info["stop_t"]),
    "best_score": float(info["best_score"]),
    "scores": [float(s) for s in info["scores"][:checks]],
    "score_t": [int(t) for t in info["score_t"][:checks]],
  }


def guard(info: dict[str, np.ndarray]) -> dict:
  """The sidecar's "guard" record of one image (docs/method.md §3, divergence guard): recovered
  steps, and the failure's name and timestep (None when the image did not fail)."""
  code = int(info["failure"])
  return {"recoveries": int(info["recoveries"]),
          "failure": state_lib.FAILURES[code] if code else None,
          "failure_t": int(info["failure_t"]) if code else None}


def guard_problem(guard: dict) -> str | None:
  """The run summary's reason for an image the divergence guard failed, else None."""
  if guard["failure"] is None:
    return None
  return (f"sampling diverged ({guard['failure']} at t = {guard['failure_t']}, after "
          f"{guard['recoveries']} recovered steps); no image written, see docs/method.md §3")
