r"""Speed benchmark: our JAX pipeline, and the PyTorch eager reference on the same weights.

One run, one device, one backbone size (`--size=tiny` for a CPU, `--size=sd21` for the
SD-2.1-base architecture on a GPU). Both sides hold the same random weights: the UNet and VAE
are created as diffusers PyTorch modules and converted to Flax, the VGG16 layers likewise, and
PCDM / discriminators start from the same values. Our models, input and contexts are put on
the device once (`eval/bench/setup.py`); the benchmark refuses to time a compiled function
given host arrays. Measured (`eval/bench/measure.py`):

- `restore` part: our compiled fixed-schedule `restore` (one `lax.scan`, as users call it) of
  a batch of B images for each of `--restore_batches`: compile time and the time of one call,
  reported as images per minute (at `--restore_scale` < 1 the call runs fewer steps and its
  time is scaled to `--steps`; the scale is recorded),
- `dqr` part: our `restore` with DQR at batch 1,
- `step` / `batch` parts: time per step at batch 1 / each of `--batches` (a guided stage-2
  step and a stage-1 step, `--repeats` rounds of `--timed_steps` steps, best round and median)
  with XLA's flops and memory analysis of the compiled step, and the batch scaling: time per
  image and flops at batch B over batch 1,
- `torch_step` / `torch_batch` parts: the same steps in PyTorch (`eval/torch_reference.py`),
  and, with `step` and `torch_step` in float32, one-step parity of the two from the same state,
- `ldrps` part: the LD-RPS procedure in PyTorch per restored image for each of
  `--ldrps_tasks`, as its script for that task runs it (450 guided steps, then 2 / 0 / 1
  recurrences of 225 from t ≈ 500 for low light / dehaze / denoise, CFG always on, the guidance
  terms that script computes; `eval/ldrps_reference.LDRPS_RECIPES`); `--ldrps_scale` shortens
  it, with linear extrapolation to the full count,
- `nets` part: our UNet forward pass, VAE encode and decode, each alone and the VAE with its
  VJP; `step_cost` part: XLA's flops and bytes of the guided step, lowered without compiling
  it (`eval/bench/nets.py`),
- `--variants` of our batch-1 step (bf16, remat, CFG, the attention implementation of
  `jax.nn.dot_product_attention` in our networks), each timed in rounds alternating with the
  base step; `--profile`: milliseconds per model part of our batch-1 guided step from a `jax.profiler` trace (`eval/step_profile.py`),
- peak memory: JAX `memory_stats()["peak_bytes_in_use"]` on a GPU (never reset: read in
  order), torch `max_memory_allocated` (reset per part), the process peak RSS, and XLA's
  `memory_analysis()` of every compiled function.

Timing excludes compilation (ahead of time, `lower().compile()`) and torch warm-up, and waits
for results (`jax.block_until_ready`, `torch.cuda.synchronize()`). The report
(`eval/bench/report.py`) prints torch time / JAX time (> 1: JAX faster), and each performance
target with its measured value and MET / NOT MET / NOT MEASURED; everything is written as
JSON after every part, so an interrupted run leaves what it measured. `--time_budget_s` skips
parts that would start after the budget; a part that fails (say, out of device memory) is
recorded under "errors" while the others go on. No download is needed.

Examples:
  python -m eval.benchmark --size=tiny --cpu_threads=1 --out=/tmp/bench.json
  python -m eval.benchmark --size=sd21 --device_check --parts=restore,step,batch \
    --out=bench.json
"""

import os

# Set before JAX loads: allocate device memory as needed, so peak memory reads are meaningful.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import dataclasses
import functools
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import torch
from absl import flags

from eval import step_profile
from eval.bench import measure, nets, report
from eval.bench import setup as setup_lib
from eval.bench.options import Options, define_flags, from_flags
from upzeroir_jax import cli

PROG = "python -m eval.benchmark"
USAGE = f"""\
usage: {PROG} --size=tiny|sd21 [--out=FILE] [flags]

Times our JAX pipeline (compiled restores at several batch sizes, steps, variants) against the
PyTorch eager reference and the LD-RPS procedure on the same random weights (no downloads) and
prints the performance targets; see the module docstring of eval/benchmark.py.
"""


def set_cpu_threads(n: int) -> None:
  """n intra-op threads for torch and for XLA's CPU backend; call before JAX computes."""
  torch.set_num_threads(n)
  extra = (f"--xla_cpu_multi_thread_eigen={'false' if n == 1 else 'true'} "
           f"intra_op_parallelism_threads={n}")
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {extra}".strip()


def _finish(res: dict[str, Any], n1: int, n2: int) -> dict[str, Any]:
  """Fills the step-time estimates, ratios and targets from the parts measured so far."""
  for side in ("jax", "torch"):
    res[side]["images_per_minute_from_steps"] = {
      b: measure.images_per_minute(s, n1, n2)
      for b, s in sorted(res[side]["steps"].items(), key=lambda kv: int(kv[0]))}
  res["ratios"] = report.compute_ratios(res)
  res["targets"] = report.evaluate_targets(res)
  return res


def _error_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"


def run_benchmark(opts: Options,
                  save: Callable[[dict[str, Any]], None] = lambda res: None) -> dict[str, Any]:
  """Runs the selected parts and returns the results (the JSON `main` writes).

  Order: step times at batch 1 (on a GPU torch first, its cached memory released before JAX
  compiles) with the parity check and profile, LD-RPS, our DQR restore, our fixed-schedule
  restores at each batch size, step times at larger batches, variants. `save` gets the results
  after every part.
  """
  start = time.perf_counter()
  parts = set(opts.parts)
  setup = setup_lib.build_setup(opts)
  n1, n2 = setup_lib.stage_counts(setup, opts.steps)
  meta = {
    **dataclasses.asdict(opts), "resolution": setup.resolution,
    "restore_steps_run": opts.restore_steps, "stage_counts": {"stage1": n1, "guided": n2},
    "t_stage1": setup.t_stage1, "t_guided": setup.t_guided,
    "jax_backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
    "torch_device": str(setup.device), "jax_version": jax.__version__,
    "torch_version": torch.__version__, "cpu_count": os.cpu_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "loadavg": [round(x, 2) for x in os.getloadavg()], "platform": platform.platform(),
    "setup_s": setup.setup_s, "skipped": [], "complete": False,
    "memory_note": ("GPU: JAX peak_bytes_in_use (never reset: read after the batch-1 parts, "
                    "then after each larger batch) and torch max_memory_allocated (reset per "
                    "part); always: the process peak RSS (JAX and torch together, "
                    "never decreasing)"),
  }
  res: dict[str, Any] = {"meta": meta, "jax": {"steps": {}, "restore": {}},
                         "torch": {"steps": {}}, "memory": {}, "errors": {}}

  def due(wanted: bool, label: str) -> bool:
    if not wanted:
      return False
    spent = time.perf_counter() - start
    if opts.time_budget_s and spent > opts.time_budget_s:
      meta["skipped"].append(label)
      return False
    print(f"[{spent:6.0f} s] {label}", flush=True)
    return True

  def done() -> None:
    meta["elapsed_s"] = time.perf_counter() - start
    save(_finish(res, n1, n2))

  def batch(b: int, with_jax: bool, with_torch: bool) -> measure.JaxStepper | None:
    try:
      jres, tres, stepper = measure.measure_batch(setup, b, with_jax, with_torch, opts)
    except Exception as e:  # noqa: BLE001 (e.g. out of device memory: keep the other results)
      res["errors"][f"batch{b}"] = _error_line(e)
      return None
    for side, r in (("jax", jres), ("torch", tres)):
      if r is not None:
        res[side]["steps"][str(b)] = r
    res["memory"][f"batch{b}"] = measure.memory(setup)
    return stepper

  want_jax1 = bool(parts & {"step", "batch"})
  want_torch1 = bool(parts & {"torch_step", "torch_batch"})
  base = None
  if due(want_jax1 or want_torch1, "step times at batch 1"):
    base = batch(1, want_jax1, want_torch1)
    if base and "torch_step" in parts and opts.dtype == "float32":
      res["parity"] = measure.parity(setup, base.probe)
    done()
  if due(opts.profile and base is not None, "profile of our guided step"):
    try:
      res["jax"]["profile"] = step_profile.profile(
        lambda: base.run(setup.t_guided, opts.timed_steps), base.compiled.as_text(),
        opts.timed_steps)
    except Exception as e:  # noqa: BLE001 (e.g. no profiler support on the device)
      res["errors"]["profile"] = _error_line(e)
    done()
  elif opts.profile and base is None:
    meta["skipped"].append("profile (needs the step part)")
  for task in opts.ldrps_tasks:
    if due("ldrps" in parts, f"LD-RPS procedure for {task} at scale {opts.ldrps_scale}"):
      res["torch"].setdefault("ldrps", {})[task] = measure.torch_ldrps(setup, opts.ldrps_scale,
                                                                       task)
      res["memory"][f"torch_ldrps_{task}"] = measure.memory(setup)
      done()
  if setup.device.type == "cuda":
    torch.cuda.empty_cache()
  if due("dqr" in parts, f"JAX restore with DQR, {opts.restore_steps} steps"):
    r = measure.jax_restore(setup, 0, True, opts.restore_steps)
    r.update(steps_full=opts.steps, per_image_s_full=r["run_s"] * opts.steps / opts.restore_steps)
    res["jax"]["restore_dqr"] = r
    done()
  if "restore" not in parts or 1 not in opts.restore_batches:
    res["jax"]["peak_batch1"] = res["memory"]["jax_batch1"] = measure.memory(setup)
  for b in opts.restore_batches:
    if due("restore" in parts, f"JAX restore at batch {b}, {opts.restore_steps} steps"):
      try:
        res["jax"]["restore"][str(b)] = measure.restore_batch(setup, b, opts)
      except Exception as e:  # noqa: BLE001 (e.g. out of device memory at a large batch)
        res["errors"][f"restore_batch{b}"] = _error_line(e)
      res["memory"][f"restore_batch{b}"] = measure.memory(setup)
      done()
    if b == 1 and "restore" in parts:
      res["jax"]["peak_batch1"] = res["memory"]["jax_batch1"] = measure.memory(setup)
  for b in opts.batches:
    with_jax, with_torch = "batch" in parts, "torch_batch" in parts
    if b != 1 and due(with_jax or with_torch, f"step times at batch {b}"):
      batch(b, with_jax, with_torch)
      done()
  if due("nets" in parts, "network pieces alone"):
    res["jax"]["nets"] = nets.measure_nets(setup, opts.timed_steps, opts.repeats)
    done()
  if due("step_cost" in parts, "XLA cost of the guided step"):
    res["jax"]["step_cost"] = nets.step_cost(setup)
    done()
  for spec in opts.variants:
    if due(base is not None, f"variant {spec}"):
      try:
        res["jax"].setdefault("variants", {})[spec] = measure.measure_variant(
          setup, base, spec, opts)
      except Exception as e:  # noqa: BLE001 (e.g. cudnn attention off a GPU)
        res["errors"][f"variant {spec}"] = _error_line(e)
      done()
    elif base is None and spec not in meta["skipped"]:
      meta["skipped"].append(f"variant {spec} (needs the step part)")
  meta["complete"] = True
  done()
  return res


def _main(fv: flags.FlagValues) -> int:
  opts = from_flags(fv)
  if opts.cpu_threads > 0:
    set_cpu_threads(opts.cpu_threads)
  if opts.device_check:
    print(setup_lib.check_devices())
  save = functools.partial(report.write_json, opts.out) if opts.out else (lambda res: None)
  report.print_report(run_benchmark(opts, save=save))
  if opts.out:
    print(f"wrote {opts.out}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the benchmark with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
