r"""Restores an evaluation dataset into a run folder (docs/method.md §9 benchmarks).

  python -m eval.run --dataset_dir=LOLv1/eval15 --output_dir=runs/lolv1 --task=lowlight \
      --benchmark=LOLv1
  python -m eval.run --dataset_dir=data/kodak24_noise25 --gt_dir=datasets/kodak24 \
      --output_dir=runs/kodak24 --task=denoise --benchmark=Kodak24

`--dataset_dir` is a folder of degraded images (then `--gt_dir` optionally holds the clean
ones, matched by file stem), a folder with the benchmark's own layout — `low/` + `high/`
(LOLv1), `Low/` + `Normal/` (LOLv2), `hazy/` + `gt/` or `hazy/` + `clear/` (HSTS), `input/` +
`gt/` — or `tfds:NAME[:SPLIT]` (needs the `tfds` extra), whose images are first written to
`<output_dir>/inputs/` (a second image feature such as `gt`/`high`/`target` to
`<output_dir>/gt/`).

Writes `<output_dir>/restored/<stem>.png` (`<stem>_<suffix>.png` where stems collide, see
`upzeroir_jax.jobs.output_names`) with a JSON sidecar each and `<output_dir>/run.json`
(the settings; eval.score and eval.tables read it). Resumable: finished images are
skipped; a run folder holding another configuration is refused unless `--overwrite`. Every
input is read and checked before a model is loaded; unusable ones are named up front and the
others restored.

Devices: the batch axis is sharded over every device (a 1-D `jax.sharding.Mesh`, axis
"batch"; `upzeroir_jax.pipeline`), and `--coordinator_address/--num_processes/--process_id`
start `jax.distributed` for multi-host runs (`--coordinator_address=auto` lets JAX detect
the cluster, e.g. on Cloud TPU or SLURM). Each process reads and writes its own rows; the
result equals a single-device run. Process 0 holds the run folder (`jobs.lock_outputs`) so that
no second run writes into it at the same time.

`--protocol=ldrps` runs LD-RPS's evaluation protocol (`eval/protocol.py`; docs/evaluation.md):
each input LANCZOS-resized to 512² (written to `<output_dir>/ldrps_inputs/`), the restored
images saved LANCZOS-resized to 256²; the default `native` restores at the input's size. The
protocol is recorded in run.json, and eval.score and eval.tables follow it. `--prompts_dir`
conditions each image on `<prompts_dir>/<input stem>.txt` (LD-RPS's `--text_dir` layout;
images without one get no prompt); each prompt is recorded in the image's sidecar.

`tfds:NAME` also serves the paper's sets as builders of this project (`eval/datasets.py`:
lolv1, lolv2, hsts, kodak24, lol_noise, lol_haze_noise), prepared from the files in
`--tfds_manual_dir` (default: tfds's own manual folder).

`--override=field=value` (repeatable) changes any `RestoreConfig` field of the task preset,
e.g. `--override=dqr=false` (eval.ablate builds the ablations of docs/method.md §8 this way).
The model and sampling flags are those of `upzeroir restore` (`upzeroir_jax.flags`).
"""

import contextlib
import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence

from absl import flags

from eval import folders, tfds_source
from eval import protocol as protocol_lib
from upzeroir_jax import auto, cli, io, loading, pipeline, smoke
from upzeroir_jax import config as config_lib
from upzeroir_jax import flags as flags_lib
from upzeroir_jax import jobs as jobs_lib
from upzeroir_jax.errors import RunError

PROG = "eval.run"
RUN_FILE = "run.json"
RESTORED = "restored"
USAGE = f"""\
usage: python -m {PROG} --dataset_dir=DIR|tfds:NAME --output_dir=DIR --task=TASK [flags]

Restores every image of an evaluation set into <output_dir>/restored/ (sharded over all
devices; resumable). Then score it with python -m eval.score --run_dir=<output_dir>.
"""


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval.run on `fv`."""
  flags.DEFINE_string("dataset_dir", None, "Folder of degraded images, a benchmark folder "
                      "(low/+high/, hazy/+gt/, ...), or tfds:NAME[:SPLIT].", flag_values=fv,
                      required=True)
  flags.DEFINE_string("gt_dir", None, "Folder of ground-truth images (matched by stem).",
                      flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Run folder.", flag_values=fv, required=True)
  flags.DEFINE_enum("task", None, [auto.AUTO, *config_lib.TASKS], "Restoration task "
                    f"(preset); '{auto.AUTO}' identifies each image's degradations and picks its "
                    "preset.", flag_values=fv, required=True)
  flags.DEFINE_string("benchmark", None, "Benchmark name for eval.tables (LOLv1, LOLv2, "
                      "HSTS, Kodak24, LOL+noise, LOL+haze+noise); default: the folder name.",
                      flag_values=fv)
  flags.DEFINE_string("variant", "full", "Method variant for eval.tables (full, no_pcdm, "
                      "no_degloss, no_dqr).", flag_values=fv)
  flags.DEFINE_enum("protocol", protocol_lib.NATIVE, list(protocol_lib.PROTOCOLS),
                    "native: restore at the input's size; ldrps: LD-RPS's protocol (input "
                    "LANCZOS-resized to 512², output saved LANCZOS-resized to 256²).",
                    flag_values=fv)
  flags.DEFINE_string("prompts_dir", None, "Folder of per-image prompts, <input stem>.txt "
                      "(images without one get no prompt).", flag_values=fv)
  flags.DEFINE_string("tfds_manual_dir", None, "Folder holding the files the tfds: builders "
                      "of eval/datasets.py prepare from (default: tfds's manual folder).",
                      flag_values=fv)
  flags_lib.define_model_flags(fv)
  flags.DEFINE_integer("max_images", None, "Restore only the first N images (by name).",
                       flag_values=fv, lower_bound=1)
  flags.DEFINE_boolean("overwrite", False, "Redo finished images; replace another run's "
                       "settings.", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for "
                      "jax.distributed, or 'auto'.", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Processes of a multi-host run.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index.", flag_values=fv)
  return fv


def resolve_dataset(dataset_dir: str, gt_dir: str | None, output_dir: pathlib.Path,
                    manual_dir: str | None = None) -> tuple[pathlib.Path, pathlib.Path | None]:
  """(folder of degraded inputs, folder of ground truth or None) for `--dataset_dir`: a folder
  (`eval.folders.resolve`) or `tfds:NAME[:SPLIT]` written out under `output_dir`.

  Raises:
    RunError: missing folders, or tfds without its extra.
  """
  if dataset_dir.startswith("tfds:"):
    return tfds_source.materialize(dataset_dir[len("tfds:"):], output_dir, gt_dir, manual_dir)
  return folders.resolve(dataset_dir, gt_dir)


def _check_same_run(path: pathlib.Path, settings: dict, overwrite: bool) -> None:
  if not path.is_file() or overwrite:
    return
  try:
    old = json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, RecursionError):
    old = None
  if not isinstance(old, dict):
    raise RunError(f"{path} is not a run record of eval.run; use another --output_dir or "
                   "--overwrite")
  for key in ("config", "model", "seed", "grid", "size", "input_dir", "protocol"):
    before, now = old.get(key), settings.get(key)
    if before == now:
      continue
    if isinstance(before, dict) and isinstance(now, dict):
      diff = [f"{k}: {before.get(k)!r} there, {now.get(k)!r} now"
              for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    else:
      diff = [f"{before!r} there, {now!r} now"]
    raise RunError(f"{path.parent} holds a run with another {key} ({'; '.join(diff)}); "
                            "use another --output_dir or --overwrite")


def _record(out: pathlib.Path, settings: dict, overwrite: bool) -> None:
  """Refuses a run folder holding another configuration, then records this one in run.json."""
  import jax

  settings = json.loads(json.dumps(settings))  # the form run.json holds (tuples as lists)
  run_file = out / RUN_FILE
  _check_same_run(run_file, settings, overwrite)
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(run_file, settings)


def _initialize_distributed(fv: flags.FlagValues) -> None:
  import jax
  if fv.coordinator_address == "auto":
    jax.distributed.initialize()
  elif fv.coordinator_address:
    jax.distributed.initialize(coordinator_address=fv.coordinator_address,
                               num_processes=fv.num_processes, process_id=fv.process_id)


def _main(fv: flags.FlagValues) -> int:
  smoke.apply_defaults(fv)
  settings = flags_lib.settings_from_flags(fv)
  pipeline.check_task(settings, fv.task)
  if settings.grid == "upsample" and fv.protocol == protocol_lib.LDRPS:
    raise RunError("--grid=upsample keeps each photo's full size, --protocol=ldrps restores "
                   "at 512² and saves 256²; use --protocol=native with --grid=upsample")
  _initialize_distributed(fv)
  import jax

  out = pathlib.Path(fv.output_dir)
  inputs, gt_dir = resolve_dataset(fv.dataset_dir, fv.gt_dir, out, fv.tfds_manual_dir)
  if fv.prompts_dir is not None and not pathlib.Path(fv.prompts_dir).is_dir():
    raise RunError(f"--prompts_dir={fv.prompts_dir}: no such folder")
  every, skipped = jobs_lib.list_images(inputs, f"--dataset_dir={fv.dataset_dir}")
  for line in skipped:
    print(f"{PROG}: {line}", file=sys.stderr)
  files = every[:fv.max_images]
  if not files:
    raise RunError(f"no images ({', '.join(sorted(io.IMAGE_SUFFIXES))}) in {inputs}")
  names = jobs_lib.output_names(files)
  sources = (protocol_lib.model_inputs(files, names, out / protocol_lib.LDRPS_INPUTS)
             if fv.protocol == protocol_lib.LDRPS else files)
  jobs = []
  for f, source, name in zip(files, sources, names):
    gt = folders.ground_truth(gt_dir, f)
    jobs.append(jobs_lib.Job(name=f.name, source=source, output=out / RESTORED / name,
                             prompt=cli.prompt_for(f, "", fv.prompts_dir),
                             extra={"gt": str(gt) if gt else None, "source": str(f)}))
  jobs_lib.check_outputs(jobs, protected=[pathlib.Path(j.extra["gt"]) for j in jobs
                                          if j.extra["gt"]], written=[out / RUN_FILE])
  presets = flags_lib.task_configs(fv, fv.task)
  benchmark = fv.benchmark or pathlib.Path(fv.dataset_dir.rstrip("/")).name
  with (jobs_lib.lock_outputs([out, out / RESTORED]) if jax.process_index() == 0
        else contextlib.nullcontext()):
    smoke_test = fv.model == loading.SMOKE_TEST_MODEL
    _record(out, {
      "benchmark": benchmark, "variant": fv.variant, "task": fv.task,
      "dataset_dir": fv.dataset_dir, "input_dir": str(inputs),
      "gt_dir": str(gt_dir) if gt_dir else None, "dataset_images": len(every),
      "model": fv.model,
      "smoke_test": smoke_test, "scorer": fv.scorer, "overrides": fv.override,
      "config": ({t: dataclasses.asdict(c) for t, c in presets.items()} if fv.task == auto.AUTO
                 else dataclasses.asdict(presets[fv.task])),
      "seed": fv.seed, "grid": fv.grid, "size": fv.size, "protocol": fv.protocol,
      "prompts_dir": fv.prompts_dir,
    }, fv.overwrite)
    summary = cli.restore_checked(PROG, fv, jobs, fv.task, settings,
                                  record={"benchmark": benchmark, "variant": fv.variant,
                                          "protocol": fv.protocol})
    if fv.protocol == protocol_lib.LDRPS:
      protocol_lib.finish_outputs([j.output for j in jobs])
  print(f"{PROG}: {benchmark}/{fv.variant}: restored {len(summary.done)}, skipped "
        f"{len(summary.skipped)} finished, failed {len(summary.failed)} -> {out / RESTORED}")
  if smoke_test:
    print(f"{PROG}: SMOKE TEST (random weights): the numbers of this run mean nothing")
  for _, message in summary.failed:
    print(f"{PROG}: error: {message}", file=sys.stderr)
  return 2 if summary.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval.run with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
