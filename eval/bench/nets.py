"""The benchmark's `nets` and `step_cost` parts: our Stable Diffusion networks alone.

`nets` times the pieces the networks make up, each compiled alone (`lower().compile()`): the
UNet forward pass, and VAE encode and decode each forward and with its VJP (the gradient the
guidance takes through the decoder, docs/method.md §3); each is reported by its best round and
its median round. `step_cost` reads XLA's cost analysis (flops, bytes accessed) of the whole
guided step, lowered from abstract arguments: nothing is compiled or run, so it fits where
compiling the SD-2.1 step does not.
"""

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eval.bench import setup as setup_lib
from eval.bench.setup import Setup
from upzeroir_jax.models import sd as sd_lib


def _pieces(setup: Setup) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]:
  """name -> (fn(backbone, *args), args): the network pieces at the setup's resolution."""
  r, f = setup.resolution, setup.models.backbone.latent_factor
  c = setup.models.backbone.latent_channels
  keys = jax.random.split(jax.random.key(setup.seed), 3)
  img = jax.random.uniform(keys[0], (1, r, r, 3))
  z = jax.random.normal(keys[1], (1, r // f, r // f, c))
  t = jnp.full((1,), setup.t_guided, jnp.int32)

  def vjp(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    def pullback(b: Any, x: jax.Array, cot: jax.Array) -> jax.Array:
      return jax.vjp(lambda x: fn(b, x), x)[1](cot)[0]
    return pullback

  enc, dec = sd_lib.encode, sd_lib.decode
  z_cot = jax.random.normal(keys[2], z.shape)
  img_cot = jax.random.normal(keys[2], img.shape)
  return {
    "unet_forward": (lambda b, z, t: sd_lib.model_output(b, z, t, None), (z, t)),
    "vae_encode": (enc, (img,)),
    "vae_encode_vjp": (vjp(enc), (img, z_cot)),
    "vae_decode": (dec, (z,)),
    "vae_decode_vjp": (vjp(dec), (z, img_cot)),
  }


def _timed(fn: Callable[..., Any], args: tuple[Any, ...], n: int) -> tuple[float, float]:
  """(wall, CPU) seconds per call of fn(*args), the means of n calls, each call's results waited
  for. The CPU time (all threads of this process) is the work done, which other processes on a
  shared machine change much less than the wall time."""
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(n):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def measure_nets(setup: Setup, calls: int, repeats: int) -> dict[str, Any]:
  """Per piece of the setup's backbone: compile seconds, the wall seconds per call of each round
  (`rounds_s`), of the best (`s`) and the median round (`median_s`), and the median round's CPU
  seconds per call (`cpu_s`).

  Args:
    setup: the benchmark setup (backbone on the device, resolution, timestep, seed).
    calls: calls per round.
    repeats: rounds per piece.
  """
  backbone, out = setup.models.backbone, {}
  for name, (fn, args) in _pieces(setup).items():
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(backbone, *args).compile()
    row = {"compile_s": time.perf_counter() - start, "rounds_s": [], "cpu_rounds_s": []}
    for _ in range(repeats):
      wall, cpu = _timed(compiled, (backbone, *args), calls)
      row["rounds_s"].append(wall)
      row["cpu_rounds_s"].append(cpu)
    row["s"] = min(row["rounds_s"])
    row["median_s"] = float(np.median(row["rounds_s"]))
    row["cpu_s"] = float(np.median(row["cpu_rounds_s"]))
    out[name] = row
  return out


def step_cost(setup: Setup, backbone: Any = None) -> dict[str, float]:
  """XLA's cost analysis of the guided step (batch 1) lowered for `backbone` (default: the
  setup's): flops, transcendentals and bytes accessed of the unoptimised program."""
  models = setup.models if backbone is None else setup.models.replace(backbone=backbone)
  config, ctx, t = setup.config, setup.ctx, jnp.int32(setup.t_guided)
  state = jax.eval_shape(lambda y, k: setup_lib.sampler_init(models, config, y, k), setup.y,
                         jax.random.key(setup.seed))
  step = jax.jit(lambda st, m, t: setup_lib.sampler_step(st, m, config, t, ctx))
  cost = step.lower(state, models, t).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {k: float(cost[k]) for k in ("flops", "transcendentals", "bytes accessed") if k in cost}
