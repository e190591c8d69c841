"""Where the time of a compiled JAX function goes, by model part, from a `jax.profiler` trace.

`profile(run, hlo_text, calls)` runs `run()` under `jax.profiler.trace`, reads the Perfetto
trace it writes, and attributes every executed operation to a part of the model. An event is
matched to an HLO instruction of the compiled module by name (XLA:CPU names each executed
thunk after its instruction; GPU kernels are named after their fusion, with '_' for '.'), and
the instruction's `op_name` metadata (the JAX call path, e.g.
`jit(one)/cond/branch_1_fun/transpose(jvp(VGG16Features))/conv1_2/...`) names the part:
UNet, VAE decoder / encoder, VGG16, PCDM, discriminators, or other; `transpose(` in the path
marks a backward-pass operation. Control-flow instructions (while, conditional, call) are left
out, since their bodies' operations are counted themselves. Events that match no instruction
(library kernels, runtime bookkeeping) are listed apart, so nothing is silently dropped.
"""

import collections
import gzip
import json
import pathlib
import re
import tempfile
from collections.abc import Callable
from typing import Any

import jax

PART_KEYS = (
  ("UNet", ("UNet",)),
  ("VAE decoder", ("decoder",)),
  ("VAE encoder", ("encoder",)),
  ("VGG16", ("VGG16Features",)),
  ("PCDM", ("PCDM", "ResBlocksNet")),
  ("discriminators", ("Discriminator",)),
)
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = .*op_name="([^"]*)"')
_CONTROL = (" while(", " conditional(", " call(")


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> `op_name` metadata of a compiled module's text (both the name and its
  '_' spelling), control-flow instructions left out."""
  names = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m and not any(c in line for c in _CONTROL):
      names[m.group(1)] = names[m.group(1).replace(".", "_")] = m.group(2)
  return names


def part_of(op_name: str) -> str:
  """'<part> forward' or '<part> backward' for a JAX call path (module docstring)."""
  part = next((name for name, keys in PART_KEYS if any(k in op_name for k in keys)), "other")
  return f"{part} {'backward' if 'transpose(' in op_name else 'forward'}"


def summarize(events: list[dict[str, Any]], names: dict[str, str], calls: int,
              top: int = 20) -> dict[str, Any]:
  """Milliseconds per call by part, the `top` slowest operations and unmatched event names.

  events: Chrome-trace events (complete events, `ph` "X", `dur` in µs).
  """
  by_part: collections.Counter = collections.Counter()
  by_op: collections.Counter = collections.Counter()
  unmatched: collections.Counter = collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    name, dur = e.get("name", ""), float(e.get("dur", 0.0)) / 1000.0 / calls
    if name in names:
      by_part[part_of(names[name])] += dur
      by_op[name] += dur
    else:
      unmatched[name] += dur
  return {
    "calls": calls,
    "matched_ms": sum(by_part.values()),
    "by_part_ms": dict(by_part.most_common()),
    "top_ops": [{"name": n, "op_name": names[n], "ms": ms} for n, ms in by_op.most_common(top)],
    "unmatched_top_ms": dict(unmatched.most_common(10)),
  }


def profile(run: Callable[[], Any], hlo_text: str, calls: int) -> dict[str, Any]:
  """Traces `run()` (which makes `calls` calls of the compiled function and waits for them)
  and returns `summarize` of its trace; the trace files are removed afterwards."""
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      run()
    found = sorted(pathlib.Path(tmp).rglob("*.trace.json.gz"))
    if not found:
      raise RuntimeError("jax.profiler wrote no Perfetto trace")
    with gzip.open(found[0], "rt") as f:
      events = json.load(f)["traceEvents"]
  return summarize(events, op_names(hlo_text), calls)
