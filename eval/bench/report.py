"""The benchmark's report: ratios, performance targets with their status, the printed summary
and the JSON file."""

import itertools
import json
import os
from typing import Any


def _get(d: Any, *keys: str) -> Any:
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def compute_ratios(res: dict[str, Any]) -> dict[str, Any]:
  """torch time / JAX time per batch (> 1: JAX faster), LD-RPS / ours per restored image, and
  how our step scales with the batch: time and XLA flops of batch B over batch 1."""
  ratios: dict[str, Any] = {"step_guided": {}, "step_stage1": {},
                            "images_per_minute_from_steps": {}, "batch_scaling": {}}
  jsteps, tsteps = res["jax"]["steps"], res["torch"]["steps"]
  for b in sorted(set(jsteps) & set(tsteps), key=int):
    for stage in ("guided", "stage1"):
      ratios[f"step_{stage}"][b] = tsteps[b][f"step_s_{stage}"] / jsteps[b][f"step_s_{stage}"]
  jipm = res["jax"]["images_per_minute_from_steps"]
  tipm = res["torch"]["images_per_minute_from_steps"]
  for b in sorted(set(jipm) & set(tipm), key=int):
    ratios["images_per_minute_from_steps"][b] = jipm[b] / tipm[b]
  one = jsteps.get("1")
  for b in sorted(jsteps, key=int):
    if one and b != "1":
      s = jsteps[b]
      ratios["batch_scaling"][b] = {
        f"step_s_{stage}_per_image_vs_batch1": s[f"step_s_{stage}"] / int(b)
        / one[f"step_s_{stage}"] for stage in ("guided", "stage1")}
      if s.get("xla_flops") and one.get("xla_flops"):
        ratios["batch_scaling"][b]["xla_flops_vs_batch1"] = s["xla_flops"] / one["xla_flops"]
  for name, ours in (("dqr", _get(res, "jax", "restore_dqr", "per_image_s_full")),
                     ("fixed", _get(res, "jax", "restore", "1", "per_image_s_full"))):
    for task, r in res["torch"].get("ldrps", {}).items():
      if ours:
        ratios.setdefault(f"ldrps_vs_restore_{name}", {})[task] = r["per_image_s_full"] / ours
  return ratios


def _target(name: str, measured: float | None, op: str, threshold: float, unit: str,
            why_not: str = "") -> dict[str, Any]:
  out = {"name": name, "measured": measured, "op": op, "threshold": threshold, "unit": unit}
  if measured is None:
    return {**out, "status": "NOT MEASURED", "why": why_not}
  met = {">=": measured >= threshold, "<": measured < threshold,
         "<=": measured <= threshold}[op]
  return {**out, "status": "MET" if met else "NOT MET"}


def evaluate_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
  """The performance targets, each with its measured value and status (never asserted)."""
  meta = res["meta"]
  gpu = meta["jax_backend"] == "gpu"
  full = meta["size"] == "sd21" and meta["resolution"] == 512
  step = _get(res, "ratios", "step_guided", "1")
  peak = _get(res, "jax", "peak_batch1", "jax_peak_bytes")
  restores = res["jax"].get("restore", {})
  ipm = {int(b): r["images_per_minute"] for b, r in restores.items()}
  growth = batch4 = None
  if len(ipm) >= 2:
    values = [ipm[b] for b in sorted(ipm)]
    growth = min(b / a for a, b in itertools.pairwise(values))
  if 1 in ipm and 4 in ipm:
    batch4 = ipm[4] / ipm[1]
  scaling = _get(res, "ratios", "batch_scaling", "4") or {}
  fixed1 = _get(restores, "1", "per_image_s_full")
  peak4 = _get(res, "memory", "restore_batch4", "jax_peak_bytes")
  return [
    _target("guided step at equal work on a CPU: torch time / JAX time",
            None if gpu else step, ">=", 1.0, "x", "not a CPU run, or no step/torch_step part"),
    _target("guided step at equal work on a GPU: torch time / JAX time",
            step if gpu else None, ">=", 2.0, "x", "needs a GPU and the step/torch_step parts"),
    _target("restored image: LD-RPS procedure time / our default (DQR) time, least over tasks",
            min((_get(res, "ratios", "ldrps_vs_restore_dqr") or {}).values(), default=None),
            ">=", 3.0, "x", "needs the dqr and ldrps parts"),
    _target("512x512 restore (DQR, batch 1) on one GPU",
            _get(res, "jax", "restore_dqr", "per_image_s_full") if gpu and full else None,
            "<", 60.0, "s", "needs --size=sd21 at 512 px on a GPU with the dqr part"),
    _target("512x512 restore (fixed schedule, batch 1) per image on one GPU",
            fixed1 if gpu and full else None, "<=", 12.0, "s",
            "needs --size=sd21 at 512 px on a GPU with the restore part"),
    _target("peak GPU memory of our pipeline at batch 1, 512x512",
            peak / 1e9 if peak and gpu and full else None, "<", 20.0, "GB",
            "needs --size=sd21 at 512 px on a GPU"),
    _target("restore images/min at batch 4 / batch 1 on one GPU, 512x512",
            batch4 if gpu and full else None, ">=", 1.5, "x",
            "needs --size=sd21 at 512 px on a GPU, restore batches 1 and 4"),
    _target("peak GPU memory after the batch-4 restore, 512x512",
            peak4 / 1e9 if peak4 and gpu and full else None, "<=", 40.0, "GB",
            "needs --size=sd21 at 512 px on a GPU, restore batch 4"),
    _target("restore throughput grows with batch size: min over b of ipm(next b) / ipm(b)",
            growth if gpu else None, ">=", 1.0, "x",
            "needs a GPU and the restore part with two or more batch sizes"),
    _target("batch-4 step on a CPU: time per image / batch 1 (guided)",
            None if gpu else scaling.get("step_s_guided_per_image_vs_batch1"), "<=", 1.1, "x",
            "needs a CPU run with step batches 1 and 4"),
    _target("batch-4 step: XLA flops / batch 1", scaling.get("xla_flops_vs_batch1"), "<=", 4.2,
            "x", "needs step batches 1 and 4 on a backend with cost analysis"),
  ]


def print_report(res: dict[str, Any]) -> None:
  """Human-readable summary of `res` on stdout."""
  meta = res["meta"]
  print(f"\n== upzeroir-jax benchmark: size={meta['size']} {meta['resolution']}px "
        f"dtype={meta['dtype']} remat={meta['remat']} cfg={meta['cfg']}; JAX on "
        f"{meta['device']}, torch on {meta['torch_device']}; load average {meta['loadavg']}")
  for side in ("jax", "torch"):
    for b, s in sorted(res[side]["steps"].items(), key=lambda kv: int(kv[0])):
      first = (f"compile {s['compile_s']:.2f} s" if side == "jax"
               else f"warm-up {s['warmup_s']:.2f} s for {s['warmup_steps']} steps")
      print(f"{side:5s} step, batch {b}: guided {s['step_s_guided'] * 1e3:9.1f} ms, stage 1 "
            f"{s['step_s_stage1'] * 1e3:9.1f} ms ({first})")
  for b, r in sorted(res["jax"].get("restore", {}).items(), key=lambda kv: int(kv[0])):
    print(f"jax   restore, batch {b}: {r['run_s']:.2f} s for {r['steps_taken']} steps (compile "
          f"{r['compile_s']:.2f} s); {r['images_per_minute']:.3g} images/min at "
          f"{r['steps_full']} steps")
  r = res["jax"].get("restore_dqr")
  if r:
    print(f"jax   restore_dqr: {r['run_s']:.2f} s for {r['steps_taken']} steps (compile "
          f"{r['compile_s']:.2f} s); per image at {r['steps_full']} steps "
          f"{r['per_image_s_full']:.2f} s")
  for task, r in res["torch"].get("ldrps", {}).items():
    print(f"torch LD-RPS {task}: {r['run_s']:.2f} s for {r['steps']} steps (scale {r['scale']}, "
          f"{r['recurrences']} recurrences); per image at {r['full_steps']} steps "
          f"{r['per_image_s_full']:.2f} s")
  for side in ("jax", "torch"):
    ipm = res[side]["images_per_minute_from_steps"]
    if ipm:
      print(f"{side:5s} images/min from step times: "
            + ", ".join(f"batch {b}: {v:.3g}" for b, v in ipm.items()))
  for spec, r in res["jax"].get("variants", {}).items():
    print(f"jax   variant {spec}: guided {r['step_s_guided'] * 1e3:.1f} ms "
          f"({r.get('speedup_guided', float('nan')):.2f}x), stage 1 "
          f"{r['step_s_stage1'] * 1e3:.1f} ms ({r.get('speedup_stage1', float('nan')):.2f}x), "
          f"XLA temp {r.get('xla_temp_size_in_bytes', 0) / 1e9:.2f} GB, compile "
          f"{r['compile_s']:.1f} s")
  for piece, row in res["jax"].get("nets", {}).items():
    print(f"jax   {piece}: {row['s'] * 1e3:.1f} ms (median {row['median_s'] * 1e3:.1f} ms, "
          f"CPU {row['cpu_s'] * 1e3:.1f} ms), compile {row['compile_s']:.1f} s")
  cost = res["jax"].get("step_cost")
  if cost:
    print("jax   guided step XLA cost: " + ", ".join(f"{k} {v:.4g}" for k, v in cost.items()))
  prof = res["jax"].get("profile")
  if prof:
    print(f"jax   guided step by part ({prof['matched_ms']:.1f} ms of traced operations per "
          "step): " + ", ".join(f"{k} {v:.1f} ms" for k, v in prof["by_part_ms"].items()))
  if res["errors"]:
    print("errors:", json.dumps(res["errors"], indent=1))
  if "parity" in res:
    p = res["parity"]
    worst = max(abs(v["jax"] - v["torch"]) / max(abs(v["torch"]), 1e-12)
                for v in p["terms"].values())
    print(f"parity at t={p['t']}: worst relative loss difference {worst:.2e}, max |dz| "
          f"{p['z_max_abs_diff']:.2e} (max |z| {p['z_max_abs']:.2f}), PCDM updates agreeing "
          f"{p['pcdm']['agreement']:.1%}")
  print("ratios (torch time / JAX time; > 1 means JAX is faster; batch_scaling: ours at "
        "batch B over batch 1):")
  print(json.dumps(res["ratios"], indent=1))
  print("memory:", json.dumps(res["memory"], indent=1))
  print("targets:")
  for t in res["targets"]:
    value = "-" if t["measured"] is None else f"{t['measured']:.3g} {t['unit']}"
    why = f" ({t['why']})" if t["status"] == "NOT MEASURED" else ""
    print(f"  [{t['status']}] {t['name']}: {value}, target {t['op']} {t['threshold']} "
          f"{t['unit']}{why}")


def write_json(path: str, res: dict[str, Any]) -> None:
  """Writes `res` to `path` atomically (a partial result survives an interrupted run)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(res, f, indent=1)
  os.replace(tmp, path)
