r"""Peak host memory of the SD VAE decoder and its gradient, with and without rematerialisation.

  python -m eval.memory_decode --resolution=512 --out=memory_decode.json

The guidance gradient (docs/method.md §3, Eq. 9–10) differentiates the VAE decoder at the full
image size. This measures, for the SD-2.1(-base) VAE architecture (random weights, float32
unless --dtype), one jitted `value_and_grad` of ⟨decode(z), g⟩ at --resolution², once with
`remat_decode=False` and once with `remat_decode=True`. Each variant runs in its own Python
process (`ru_maxrss` never decreases), one after the other, and reports:

- `maxrss_before_gb`: peak resident memory once the weights and inputs exist (before compiling),
- `maxrss_gb`: peak resident memory after compiling and running the gradient twice,
- `xla_temp_gb`: XLA's temporary buffer size for the compiled gradient (`memory_analysis`),
  the part that would live on an accelerator,
- `step_s`: wall time of the second (compiled) run.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from upzeroir_jax import cli
from upzeroir_jax.models import sd

PROG = "eval.memory_decode"
USAGE = f"""\
usage: python -m {PROG} [--resolution=512] [--dtype=float32] [--out=FILE]

Peak memory of the SD VAE decoder's gradient with and without rematerialisation.
"""
_GB = 1024**3


def _maxrss_gb() -> float:
  """Peak resident set size of this process (Linux reports kilobytes)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GB


def _cpu_name() -> str:
  """The CPU model from /proc/cpuinfo (Linux), else the platform's processor string."""
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return names[0] if names else platform.processor()


def measure(resolution: int, remat: bool, dtype: str) -> dict:
  """Builds the SD-2.1 VAE, compiles and runs the decoder gradient; returns the numbers."""
  model = sd.from_config(sd.SD21_BASE, jax.random.key(0), jnp.dtype(dtype), parts=("vae",))
  model = model.replace(remat_decode=remat)
  h = resolution // model.latent_factor
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((1, h, h, model.latent_channels)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((1, resolution, resolution, 3)), jnp.float32)

  def loss(model, z, g):
    return jnp.sum(sd.decode(model, z) * g)

  before = _maxrss_gb()
  compiled = jax.jit(jax.value_and_grad(loss, argnums=1)).lower(model, z, g).compile()
  analysis = compiled.memory_analysis()
  jax.block_until_ready(compiled(model, z, g))
  start = time.perf_counter()
  jax.block_until_ready(compiled(model, z, g))
  return {
    "variant": "remat" if remat else "plain",
    "resolution": resolution,
    "dtype": dtype,
    "maxrss_before_gb": round(before, 3),
    "maxrss_gb": round(_maxrss_gb(), 3),
    "xla_temp_gb": round(analysis.temp_size_in_bytes / _GB, 3) if analysis else None,
    "step_s": round(time.perf_counter() - start, 2),
  }


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval.memory_decode on `fv`."""
  flags.DEFINE_integer("resolution", 512, "Image side in pixels (multiple of 8).",
                       flag_values=fv, lower_bound=8)
  flags.DEFINE_enum("variant", "all", ["all", "plain", "remat"],
                    "'all' runs each variant in a subprocess.", flag_values=fv)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Decoder dtype.",
                    flag_values=fv)
  flags.DEFINE_string("out", None, "JSON file for the results (with --variant=all).",
                      flag_values=fv)
  return fv


def _main(fv: flags.FlagValues) -> int:
  if fv.resolution % 8:
    raise ValueError(f"--resolution must be a multiple of 8, got {fv.resolution}")
  if fv.variant != "all":
    print(json.dumps(measure(fv.resolution, fv.variant == "remat", fv.dtype)))
    return 0
  results = []
  for variant in ("plain", "remat"):
    cmd = [sys.executable, "-m", PROG, f"--variant={variant}"]
    cmd += [f"--resolution={fv.resolution}", f"--dtype={fv.dtype}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    results.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps(results[-1]))
  report = {
    "machine": f"{_cpu_name()}, {os.cpu_count()} cores, {platform.machine()}",
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "results": results,
  }
  if fv.out:
    with open(fv.out, "w") as f:
      json.dump(report, f, indent=1)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval.memory_decode with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
