"""`upzeroir`: restore photos with UP-ZeroIR from the command line (METHOD.md §3–§7).

  upzeroir restore --input=photo.jpg --output=restored.png
  upzeroir restore --input=photos/ --output=restored/ --task=dehaze --batch=4

`--task=auto` (the default) identifies each image's degradations (`upzeroir_jax.auto`) and
restores it with the matching preset; the sidecar's "auto" entry records what was found and the
estimates, its "task" the preset used. An explicit `--task` applies one preset to every image.

Any size and any format `io.read_image` reads; each output has its input's exact size and a
JSON sidecar (same name, `.json`) with the settings, seed, model, timings and DQR record.
Finished outputs are skipped on a re-run (`--overwrite` redoes them). Batches run through
`upzeroir_jax.pipeline` (vmapped `restore`, sharded over the local devices).

Exit codes: 0 every image restored or already finished; 2 bad input — unknown command, flag or
task, missing input path, missing weights, a model that cannot be loaded, or images that could
not be read (the others are still restored and the failures are listed at the end); 1 an
unexpected internal error; 130 interrupted. Problems are reported in one line on stderr with
no traceback unless `--verbose`.
"""

from __future__ import annotations

import pathlib
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import flags, logging

from upzeroir_jax import auto, io, pipeline
from upzeroir_jax import config as config_lib

PROG = "upzeroir"
COMMANDS = ("restore",)
USAGE = f"""\
usage: {PROG} restore --input=FILE|DIR --output=FILE|DIR [--task=TASK] [flags]

Zero-shot restoration (low light, haze, noise and their mixtures) of any photo with a
pre-trained Stable Diffusion prior (UP-ZeroIR). TASK is {auto.AUTO} (default: identified per
image) or one of {", ".join(config_lib.TASKS)}.

examples:
  {PROG} restore --input=dark.jpg --output=bright.png
  {PROG} restore --input=photos/ --output=restored/ --task=mixed --batch=4
  {PROG} restore --input=dark.jpg --output=out/ --task=lowlight --model=tiny   # smoke test
"""


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """Defines the `upzeroir restore` flags on `fv` (a fresh `FlagValues` per invocation)."""
  flags.DEFINE_string("input", None, "Image file, or folder of images (not recursive).",
                      flag_values=fv, required=True)
  flags.DEFINE_string("output", None, "Output image file (format from its suffix) or folder "
                      "(created; PNG files named after the inputs).", flag_values=fv,
                      required=True)
  flags.DEFINE_enum("task", auto.AUTO, [auto.AUTO, *config_lib.TASKS], "Degradation to "
                    "remove; selects the paper's loss weights (mixed: the low-light row). "
                    f"'{auto.AUTO}': identified per image from the image itself.",
                    flag_values=fv)
  flags.DEFINE_string("model", pipeline.SD_DEFAULT, "Diffusion prior: hub id (downloaded on "
                      "first use), diffusers folder, our checkpoint, or 'tiny' (random "
                      "weights: a smoke test of the pipeline, not a restoration).",
                      flag_values=fv)
  flags.DEFINE_string("prompt", "", "Text prompt for every image (default: none).",
                      flag_values=fv)
  flags.DEFINE_string("prompt_dir", None, "Folder of per-image prompts: <input stem>.txt "
                      "(images without one get no prompt).", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Base seed; image keys are fold_in(seed, crc32(name)).",
                       flag_values=fv)
  flags.DEFINE_integer("steps", None, "DDIM steps (default: the preset's, 450).",
                       flag_values=fv, lower_bound=1)
  flags.DEFINE_enum("scorer", "arniqa", list(pipeline.SCORERS), "Quality model of dynamic "
                    "quality refinement (DQR); 'none' runs one fixed pass.", flag_values=fv)
  flags.DEFINE_string("arniqa", "checkpoints/arniqa", "Folder with the converted ARNIQA "
                      f"checkpoints ({pipeline.ARNIQA_ENCODER}, {pipeline.ARNIQA_REGRESSOR}).",
                      flag_values=fv)
  flags.DEFINE_string("vgg", "checkpoints/vgg16.safetensors", "Converted VGG16 checkpoint of "
                      "the perceptual loss.", flag_values=fv)
  flags.DEFINE_integer("batch", 1, "Images restored together (vmapped; split over the "
                       "devices).", flag_values=fv, lower_bound=1)
  flags.DEFINE_enum("grid", "resize", ["resize", "pad"], "Model input grid: 'resize' to "
                    "--size squared (as the paper), or 'pad' every image to multiples of 64 "
                    "(keeps all pixels; memory grows with the image).", flag_values=fv)
  flags.DEFINE_integer("size", 512, "Grid side in --grid=resize mode.", flag_values=fv,
                       lower_bound=1)
  flags.DEFINE_multi_string("override", [], "Change a RestoreConfig field of the task preset: "
                            "field=value (repeatable), e.g. guidance_scale=2000.",
                            flag_values=fv)
  flags.DEFINE_enum("bits", "8", ["8", "16"], "Bits per channel of PNG outputs.",
                    flag_values=fv)
  flags.DEFINE_boolean("overwrite", False, "Redo outputs that already exist.", flag_values=fv)
  flags.DEFINE_boolean("verbose", False, "Log progress details; show tracebacks.",
                       flag_values=fv)
  return fv


def help_text(usage: str, fv: flags.FlagValues) -> str:
  """`usage` followed by the help of every flag of `fv`."""
  lines = fv.get_help(prefix="  ", include_special_flags=False).splitlines()
  body = [line for line in lines if line.strip() and not line.rstrip().endswith(".py:")]
  return usage + "\nflags:\n" + "\n".join(body) + "\n"


def _output_name(src: pathlib.Path, taken: set[str]) -> str:
  """`<stem>.png`, or `<stem>_<suffix>.png` when another input has the same stem."""
  name = f"{src.stem}.png"
  if name in taken:
    name = f"{src.stem}_{src.suffix.lstrip('.').lower()}.png"
  taken.add(name)
  return name


def _prompt_for(src: pathlib.Path, prompt: str, prompt_dir: str | None) -> str:
  if prompt_dir is None:
    return prompt
  path = pathlib.Path(prompt_dir) / f"{src.stem}.txt"
  return path.read_text().strip() if path.is_file() else ""


def jobs_for(input_path: str, output_path: str, prompt: str = "",
             prompt_dir: str | None = None) -> list[pipeline.Job]:
  """The jobs of `upzeroir restore`: one input file, or every image file of a folder.

  A folder's images are its files with an image suffix (.png, .jpg, .jpeg, .bmp, .tif,
  .tiff, .webp; not recursive, hidden files ignored), each written to `<output>/<stem>.png`.
  A single input goes to `output` when that has an image suffix, else into the folder
  `output`.

  Raises:
    pipeline.RunError: missing input, folder without images, or an unusable output path.
  """
  src, dst = pathlib.Path(input_path), pathlib.Path(output_path)
  if prompt and prompt_dir:
    raise pipeline.RunError("give --prompt or --prompt_dir, not both")
  if prompt_dir is not None and not pathlib.Path(prompt_dir).is_dir():
    raise pipeline.RunError(f"--prompt_dir={prompt_dir}: no such folder")
  if not src.exists():
    raise pipeline.RunError(f"--input={input_path}: no such file or folder")
  if dst.resolve() == src.resolve():
    raise pipeline.RunError(f"--output={output_path} is the input itself; choose another "
                            "output so that the originals are kept")
  if src.is_dir():
    files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in io.IMAGE_SUFFIXES)
    if not files:
      raise pipeline.RunError(f"--input={input_path}: no image files "
                              f"({', '.join(sorted(io.IMAGE_SUFFIXES))}) in this folder")
    if dst.suffix.lower() in io.IMAGE_SUFFIXES or dst.is_file():
      raise pipeline.RunError(f"--output={output_path}: the input is a folder, so the output "
                              "must be a folder too")
    taken: set[str] = set()
    return [pipeline.Job(name=f.name, source=f, output=dst / _output_name(f, taken),
                         prompt=_prompt_for(f, prompt, prompt_dir)) for f in files]
  if dst.suffix.lower() not in io.IMAGE_SUFFIXES:
    if dst.suffix and not dst.is_dir():
      raise pipeline.RunError(f"--output={output_path}: unknown image suffix {dst.suffix!r}; "
                              f"use one of {', '.join(sorted(io.IMAGE_SUFFIXES))} or a folder")
    dst = dst / f"{src.stem}.png"
  return [pipeline.Job(name=src.name, source=src, output=dst,
                       prompt=_prompt_for(src, prompt, prompt_dir))]


def run_by_task(jobs: list[pipeline.Job], task: str, loaded: pipeline.Loaded,
                configs: dict[str, config_lib.RestoreConfig], **kwargs) -> pipeline.Summary:
  """`pipeline.run` of `jobs` with `configs[task]`; for task "auto" the jobs are grouped by
  `auto.group_jobs` (each sidecar then records what was identified, under "auto") and each
  group runs with its task's config. `kwargs` go to every `pipeline.run`."""
  groups = auto.group_jobs(jobs) if task == auto.AUTO else {task: list(jobs)}
  summary = pipeline.Summary()
  for name, group in groups.items():
    part = pipeline.run(group, loaded, configs[name], **kwargs)
    summary.done += part.done
    summary.skipped += part.skipped
    summary.failed += part.failed
  return summary


def _error(prog: str, message: str) -> int:
  print(f"{prog}: error: {message}", file=sys.stderr)
  return 2


def _restore(fv: flags.FlagValues) -> int:
  jobs = jobs_for(fv.input, fv.output, fv.prompt, fv.prompt_dir)
  overrides = pipeline.parse_overrides(fv.override)
  overrides.setdefault("dqr", fv.scorer != "none")
  if fv.steps:
    overrides["steps"] = fv.steps
  configs = {task: config_lib.preset(task, **overrides) for task in config_lib.TASKS}
  loaded = pipeline.load_models(fv.model, vgg_path=fv.vgg, arniqa_dir=fv.arniqa,
                                scorer=fv.scorer)
  summary = run_by_task(jobs, fv.task, loaded, configs, seed=fv.seed, grid=fv.grid,
                        size=fv.size, batch=fv.batch, bits=int(fv.bits),
                        overwrite=fv.overwrite, record={"command": "upzeroir restore"})
  print(f"{PROG}: restored {len(summary.done)}, skipped {len(summary.skipped)} already "
        f"finished (--overwrite redoes them), failed {len(summary.failed)}; outputs in "
        f"{fv.output}")
  if loaded.smoke_test:
    print(f"{PROG}: SMOKE TEST: --model=tiny has random weights; the outputs only show that "
          "the pipeline runs, they are not restorations")
  if not summary.failed:
    return 0
  if len(summary.failed) == 1:
    return _error(PROG, summary.failed[0][1])
  _error(PROG, f"{len(summary.failed)} images could not be restored:")
  for _, message in summary.failed:
    print(f"  {message}", file=sys.stderr)
  return 2


def run_main(prog: str, usage: str, fv: flags.FlagValues, argv: Sequence[str] | None,
             body: Callable[[flags.FlagValues, list[str]], int]) -> int:
  """Parses `argv` into `fv` and runs `body(fv, rest)`, mapping problems to exit codes.

  Shared by `upzeroir` and the eval binaries. `--help` prints the help (exit 0), no arguments
  print it too (exit 2). Flag errors and `ValueError`s (bad input, missing weights) print one
  line `<prog>: error: ...` (exit 2); other exceptions one line (exit 1); a traceback only
  with `--verbose` (a flag `fv` must define).
  """
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("-h", "--help", "-help", "--helpfull", "help") for a in argv[1:]):
    print(help_text(usage, fv))
    return 0
  if len(argv) < 2:
    print(help_text(usage, fv))
    return 2
  verbose = "--verbose" in argv[1:]
  try:
    rest = fv(argv)
    logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    return body(fv, rest)
  except flags.Error as e:
    return _error(prog, f"{e} (see `{prog} --help`)")
  except (ValueError, FileNotFoundError) as e:
    if verbose:
      traceback.print_exc()
    return _error(prog, " ".join(str(e).split()) or type(e).__name__)
  except KeyboardInterrupt:
    print(f"{prog}: interrupted; run the same command again to resume", file=sys.stderr)
    return 130
  except Exception as e:  # one line instead of a traceback, unless --verbose
    if verbose:
      raise
    message = " ".join(str(e).split())[:300]
    print(f"{prog}: internal error: {type(e).__name__}: {message} (run with --verbose for "
          "the traceback)", file=sys.stderr)
    return 1


def _command(fv: flags.FlagValues, rest: list[str]) -> int:
  if rest[1:] != ["restore"]:
    extra = " ".join(rest[1:]) or "(none)"
    return _error(PROG, f"unknown command {extra!r}; the command is `{PROG} restore` "
                  f"(see `{PROG} --help`)")
  return _restore(fv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs `upzeroir` with `argv` (default `sys.argv`) and returns the exit code."""
  return run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _command)


if __name__ == "__main__":
  sys.exit(main())
