r"""Restores an evaluation dataset into a run folder (METHOD.md §9 benchmarks).

  python eval/run.py --dataset_dir=LOLv1/eval15 --output_dir=runs/lolv1 --task=lowlight \
      --benchmark=LOLv1
  python eval/run.py --dataset_dir=data/kodak24_noise25 --gt_dir=../shared/datasets/kodak24 \
      --output_dir=runs/kodak24 --task=denoise --benchmark=Kodak24

`--dataset_dir` is a folder of degraded images (then `--gt_dir` optionally holds the clean
ones, matched by file stem), a folder with the benchmark's own layout — `low/` + `high/`
(LOLv1), `Low/` + `Normal/` (LOLv2), `hazy/` + `gt/` or `hazy/` + `clear/` (HSTS), `input/` +
`gt/` — or `tfds:NAME[:SPLIT]` (needs the `tfds` extra), whose images are first written to
`<output_dir>/inputs/` (a second image feature such as `gt`/`high`/`target` to
`<output_dir>/gt/`).

Writes `<output_dir>/restored/<stem>.png` with a JSON sidecar each and `<output_dir>/run.json`
(the settings; eval/score.py and eval/tables.py read it). Resumable: finished images are
skipped; a run folder holding another configuration is refused unless `--overwrite`.

Devices: the batch axis is sharded over every device (a 1-D `jax.sharding.Mesh`, axis
"batch"; `upzeroir_jax.pipeline`), and `--coordinator_address/--num_processes/--process_id`
start `jax.distributed` for multi-host runs (`--coordinator_address=auto` lets JAX detect
the cluster, e.g. on Cloud TPU or SLURM). Each process reads and writes its own rows; the
result equals a single-device run.

`--override=field=value` (repeatable) changes any `RestoreConfig` field of the task preset,
e.g. `--override=dqr=false` (eval/ablate.py builds the ablations of METHOD §8 this way).
"""

import os
import sys

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses
import json
import pathlib
from collections.abc import Sequence

from absl import flags

from upzeroir_jax import auto, cli, io, pipeline
from upzeroir_jax import config as config_lib

PROG = "eval/run.py"
RUN_FILE = "run.json"
RESTORED = "restored"
# (degraded, ground truth) sub-folder names of the benchmarks' own layouts, case-insensitive.
LAYOUTS = (("low", "high"), ("low", "normal"), ("hazy", "gt"), ("hazy", "clear"),
           ("input", "gt"), ("input", "target"), ("lq", "gt"))
_TFDS_GT_KEYS = ("gt", "high", "target", "clean", "clear", "hq")
USAGE = f"""\
usage: {PROG} --dataset_dir=DIR|tfds:NAME --output_dir=DIR --task=TASK [flags]

Restores every image of an evaluation set into <output_dir>/restored/ (sharded over all
devices; resumable). Then score it with eval/score.py --run_dir=<output_dir>.
"""


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval/run.py on `fv`."""
  flags.DEFINE_string("dataset_dir", None, "Folder of degraded images, a benchmark folder "
                      "(low/+high/, hazy/+gt/, ...), or tfds:NAME[:SPLIT].", flag_values=fv,
                      required=True)
  flags.DEFINE_string("gt_dir", None, "Folder of ground-truth images (matched by stem).",
                      flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Run folder.", flag_values=fv, required=True)
  flags.DEFINE_enum("task", None, [auto.AUTO, *config_lib.TASKS], "Restoration task (preset); "
                    f"'{auto.AUTO}' identifies each image's degradations and picks its preset.",
                    flag_values=fv, required=True)
  flags.DEFINE_string("benchmark", None, "Benchmark name for eval/tables.py (LOLv1, LOLv2, "
                      "HSTS, Kodak24, LOL+noise, LOL+haze+noise); default: the folder name.",
                      flag_values=fv)
  flags.DEFINE_string("variant", "full", "Method variant for eval/tables.py (full, no_pcdm, "
                      "no_degloss, no_dqr).", flag_values=fv)
  flags.DEFINE_multi_string("override", [], "RestoreConfig field=value (repeatable).",
                            flag_values=fv)
  flags.DEFINE_string("model", pipeline.SD_DEFAULT, "Diffusion prior (hub id, folder, "
                      "checkpoint, or tiny).", flag_values=fv)
  flags.DEFINE_enum("scorer", "arniqa", list(pipeline.SCORERS), "DQR quality model.",
                    flag_values=fv)
  flags.DEFINE_string("arniqa", "checkpoints/arniqa", "Converted ARNIQA checkpoint folder.",
                      flag_values=fv)
  flags.DEFINE_string("vgg", "checkpoints/vgg16.safetensors", "Converted VGG16 checkpoint.",
                      flag_values=fv)
  flags.DEFINE_integer("steps", None, "DDIM steps (default: the preset's).", flag_values=fv,
                       lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Base seed of the per-image keys.", flag_values=fv)
  flags.DEFINE_integer("batch", 1, "Global batch (rounded up to a multiple of the devices).",
                       flag_values=fv, lower_bound=1)
  flags.DEFINE_enum("grid", "resize", ["resize", "pad"], "Model grid mode.", flag_values=fv)
  flags.DEFINE_integer("size", 512, "Grid side in resize mode.", flag_values=fv, lower_bound=1)
  flags.DEFINE_integer("max_images", None, "Restore only the first N images (by name).",
                       flag_values=fv, lower_bound=1)
  flags.DEFINE_boolean("overwrite", False, "Redo finished images; replace another run's "
                       "settings.", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for "
                      "jax.distributed, or 'auto'.", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Processes of a multi-host run.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index.", flag_values=fv)
  flags.DEFINE_boolean("verbose", False, "Log details; show tracebacks.", flag_values=fv)
  return fv


def _find_child(folder: pathlib.Path, name: str) -> pathlib.Path | None:
  for child in folder.iterdir():
    if child.is_dir() and child.name.lower() == name:
      return child
  return None


def resolve_dataset(dataset_dir: str, gt_dir: str | None, output_dir: pathlib.Path
                    ) -> tuple[pathlib.Path, pathlib.Path | None]:
  """(folder of degraded inputs, folder of ground truth or None) for `--dataset_dir`.

  Raises:
    pipeline.RunError: missing folders, or tfds without its extra.
  """
  if dataset_dir.startswith("tfds:"):
    return _materialize_tfds(dataset_dir[len("tfds:"):], output_dir, gt_dir)
  folder = pathlib.Path(dataset_dir)
  if not folder.is_dir():
    raise pipeline.RunError(f"--dataset_dir={dataset_dir}: no such folder")
  if gt_dir is not None and not pathlib.Path(gt_dir).is_dir():
    raise pipeline.RunError(f"--gt_dir={gt_dir}: no such folder")
  for low, high in LAYOUTS:
    inputs, truth = _find_child(folder, low), _find_child(folder, high)
    if inputs is not None and truth is not None:
      return inputs, pathlib.Path(gt_dir) if gt_dir else truth
  return folder, pathlib.Path(gt_dir) if gt_dir else None


def _materialize_tfds(spec: str, output_dir: pathlib.Path, gt_dir: str | None
                      ) -> tuple[pathlib.Path, pathlib.Path | None]:
  """Writes a tfds split's images as PNGs (process 0; the others wait) and returns the folders."""
  import jax
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise pipeline.RunError("tfds: datasets need the tfds extra: pip install -e '.[tfds]'"
                            ) from None
  name, _, split = spec.partition(":")
  inputs, truth = output_dir / "inputs", output_dir / "gt"
  if jax.process_index() == 0 and not (inputs / ".complete").exists():
    for i, example in enumerate(tfds.as_numpy(tfds.load(name, split=split or "test",
                                                        shuffle_files=False))):
      images = {k: v for k, v in example.items() if getattr(v, "ndim", 0) == 3}
      if not images:
        raise pipeline.RunError(f"tfds:{spec} has no image feature")
      gt_key = next((k for k in images if k.lower() in _TFDS_GT_KEYS), None)
      in_key = "image" if "image" in images and gt_key != "image" else next(
          k for k in images if k != gt_key)
      io.write_image(inputs / f"{i:05d}.png", images[in_key])
      if gt_key is not None:
        io.write_image(truth / f"{i:05d}.png", images[gt_key])
    (inputs / ".complete").touch()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("tfds materialized")
  if gt_dir:
    return inputs, pathlib.Path(gt_dir)
  return inputs, truth if truth.is_dir() else None


def ground_truth(gt_dir: pathlib.Path | None, source: pathlib.Path) -> pathlib.Path | None:
  """The ground-truth file of `source`: same stem, or the stem's part before the first `_`
  (RESIDE names hazy images `<id>_<A>_<beta>`); None when there is none."""
  if gt_dir is None:
    return None
  candidates = {p.stem: p for p in gt_dir.iterdir()
                if p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES}
  return candidates.get(source.stem) or candidates.get(source.stem.split("_")[0])


def _check_same_run(path: pathlib.Path, settings: dict, overwrite: bool) -> None:
  if not path.is_file() or overwrite:
    return
  old = json.loads(path.read_text())
  for key in ("config", "model", "seed", "grid", "size", "input_dir"):
    before, now = old.get(key), settings.get(key)
    if before == now:
      continue
    if isinstance(before, dict) and isinstance(now, dict):
      diff = [f"{k}: {before.get(k)!r} there, {now.get(k)!r} now"
              for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    else:
      diff = [f"{before!r} there, {now!r} now"]
    raise pipeline.RunError(f"{path.parent} holds a run with another {key} ({'; '.join(diff)}); "
                            "use another --output_dir or --overwrite")


def _initialize_distributed(fv: flags.FlagValues) -> None:
  import jax
  if fv.coordinator_address == "auto":
    jax.distributed.initialize()
  elif fv.coordinator_address:
    jax.distributed.initialize(coordinator_address=fv.coordinator_address,
                               num_processes=fv.num_processes, process_id=fv.process_id)


def _main(fv: flags.FlagValues, rest: list[str]) -> int:
  if rest[1:]:
    raise pipeline.RunError(f"unexpected arguments: {' '.join(rest[1:])}")
  _initialize_distributed(fv)
  import jax

  out = pathlib.Path(fv.output_dir)
  inputs, gt_dir = resolve_dataset(fv.dataset_dir, fv.gt_dir, out)
  files = sorted(p for p in inputs.iterdir() if p.is_file() and not p.name.startswith(".")
                 and p.suffix.lower() in io.IMAGE_SUFFIXES)[:fv.max_images]
  if not files:
    raise pipeline.RunError(f"no images ({', '.join(sorted(io.IMAGE_SUFFIXES))}) in {inputs}")
  overrides = pipeline.parse_overrides(fv.override)
  if fv.steps:
    overrides["steps"] = fv.steps
  overrides.setdefault("dqr", fv.scorer != "none")
  configs = {task: config_lib.preset(task, **overrides) for task in config_lib.TASKS}
  loaded = pipeline.load_models(fv.model, vgg_path=fv.vgg, arniqa_dir=fv.arniqa,
                                scorer=fv.scorer)
  benchmark = fv.benchmark or pathlib.Path(fv.dataset_dir.rstrip("/")).name
  settings = {
    "benchmark": benchmark, "variant": fv.variant, "task": fv.task,
    "dataset_dir": fv.dataset_dir, "input_dir": str(inputs),
    "gt_dir": str(gt_dir) if gt_dir else None, "model": fv.model,
    "smoke_test": loaded.smoke_test, "scorer": fv.scorer, "overrides": fv.override,
    "config": ({t: dataclasses.asdict(c) for t, c in configs.items()} if fv.task == auto.AUTO
               else dataclasses.asdict(configs[fv.task])),
    "seed": fv.seed, "grid": fv.grid, "size": fv.size,
  }
  settings = json.loads(json.dumps(settings))  # the form run.json holds (tuples as lists)
  run_file = out / RUN_FILE
  _check_same_run(run_file, settings, fv.overwrite)
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
  jobs = []
  for f in files:
    gt = ground_truth(gt_dir, f)
    jobs.append(pipeline.Job(name=f.name, source=f, output=out / RESTORED / f"{f.stem}.png",
                             extra={"gt": str(gt) if gt else None}))
  summary = cli.run_by_task(jobs, fv.task, loaded, configs, seed=fv.seed, grid=fv.grid,
                            size=fv.size, batch=fv.batch, overwrite=fv.overwrite,
                            record={"benchmark": benchmark, "variant": fv.variant})
  print(f"{PROG}: {benchmark}/{fv.variant}: restored {len(summary.done)}, skipped "
        f"{len(summary.skipped)} finished, failed {len(summary.failed)} -> {out / RESTORED}")
  if loaded.smoke_test:
    print(f"{PROG}: SMOKE TEST (random weights): the numbers of this run mean nothing")
  for _, message in summary.failed:
    print(f"{PROG}: error: {message}", file=sys.stderr)
  return 2 if summary.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval/run.py with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
