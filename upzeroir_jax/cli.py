"""`upzeroir`: restore photos with UP-ZeroIR from the command line (docs/method.md §3–§7).

  upzeroir restore --input=photo.jpg --output=restored.png
  upzeroir restore --input=photos/ --output=restored/ --task=dehaze --batch=4

`--task=auto` (the default) identifies each image's degradations (`upzeroir_jax.auto`, from
the image itself, on the host, once per image while the inputs are checked) and restores it
with the matching preset; the sidecar's "auto" entry records what was found and the
estimates, its "task" the preset used, and a clean-looking image gets one log line. An
explicit `--task` applies one preset to every image.

Any size and any format `io.read_image` reads; each output has its input's exact size and a
JSON sidecar (same name, `.json`) with the settings, seed, model, timings and DQR record.
Every input is opened and checked, and every output place, before a model is loaded: a run
whose inputs are all unusable fails in seconds, and unusable inputs are named up front while
the others are restored. Finished outputs are skipped on a re-run when they were made with the
same settings (each image's task, steps, overrides, seed, grid, bits, model, scorer,
version), refused when made with others; `--overwrite` redoes them. No output ever replaces
an input, outputs named after their inputs never go into a folder holding inputs, and one run
at a time writes an output folder (`upzeroir_jax.jobs`). Batches run through
`upzeroir_jax.pipeline` (vmapped `restore`, sharded over the local devices).

Progress goes to stderr: "loading models", then "compiling" or "loading compiled program from
cache" as JAX reports it (on a terminal with a spinner and the elapsed time), then the images
with their rate and time left (on a terminal a bar that also shows the sampling step,
`--step_progress`; otherwise one log line per image). On a terminal every line reads
`upzeroir: ...`; `--verbose` and log files keep absl's log format. Compiled programs are kept
in JAX's persistent compilation cache (`--compilation_cache`, default
`$XDG_CACHE_HOME/upzeroir-jax/jax` or `~/.cache/upzeroir-jax/jax`), so only the first run of a
model, size and setting compiles. `--model=tiny` is a smoke test on random weights with small
defaults of its own (`upzeroir_jax.smoke`), fast on a 2-core CPU. Ctrl-C stops within
a second at any point, also inside a compiled call, and leaves no partial output, temporary or
lock file; rerunning resumes. `upzeroir --version` prints the versions.

Exit codes: 0 every image restored or already finished; 2 bad input — unknown command, flag or
task, missing input path, an output that would replace an input, an output folder in use by
another run, missing weights, a model that cannot be loaded, or images that could not be
read or written (the others are still restored and the failures are listed at the end); 1 an
unexpected internal error; 130 interrupted. Problems are reported in one line on stderr with
no traceback unless `--verbose`.
"""

from __future__ import annotations

import pathlib
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import flags, logging

import upzeroir_jax
from upzeroir_jax import auto, interrupt, io, loading, pipeline, preflight, records, smoke, startup
from upzeroir_jax import config as config_lib
from upzeroir_jax import flags as flags_lib
from upzeroir_jax import jobs as jobs_lib
from upzeroir_jax import progress as progress_lib
from upzeroir_jax.errors import RunError

PROG = "upzeroir"
COMMANDS = ("restore",)
USAGE = f"""\
usage: {PROG} restore --input=FILE|DIR --output=FILE|DIR [--task=TASK] [flags]

Zero-shot restoration (low light, haze, noise and their mixtures) of any photo with a
pre-trained Stable Diffusion prior (UP-ZeroIR). TASK is {auto.AUTO} (the default: each image's
degradations identified from the image itself) or one of {", ".join(config_lib.TASKS)}.

examples:
  {PROG} restore --input=dark.jpg --output=bright.png
  {PROG} restore --input=photos/ --output=restored/ --task=mixed --batch=4
  {PROG} restore --input=dark.jpg --output=out/ --task=lowlight --model=tiny   # smoke test

--model=tiny is a smoke test on random weights (not a restoration) that needs
{smoke.COST} on a 2-core CPU. Its own defaults:
{smoke.describe()}
(each overridable by giving the flag).
"""


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """Defines the `upzeroir restore` flags on `fv` (a fresh `FlagValues` per invocation)."""
  flags.DEFINE_string("input", None, "Image file, or folder of images (not recursive).",
                      flag_values=fv, required=True)
  flags.DEFINE_string("output", None, "Output image file (format from its suffix) or folder "
                      "(created; PNG files named after the inputs; not a folder that holds "
                      "inputs).", flag_values=fv, required=True)
  flags.DEFINE_enum("task", auto.AUTO, [auto.AUTO, *config_lib.TASKS], "Degradation to "
                    "remove; selects the paper's loss weights (mixed: the low-light row). "
                    f"'{auto.AUTO}': identified per image from the image itself.",
                    flag_values=fv)
  flags.DEFINE_string("prompt", "", "Text prompt for every image (default: none).",
                      flag_values=fv)
  flags.DEFINE_string("prompt_dir", None, "Folder of per-image prompts: <input stem>.txt "
                      "(images without one get no prompt).", flag_values=fv)
  flags_lib.define_model_flags(fv)
  flags.DEFINE_enum("bits", "8", ["8", "16"], "Bits per channel of PNG outputs.",
                    flag_values=fv)
  flags.DEFINE_boolean("overwrite", False, "Redo outputs that already exist.", flag_values=fv)
  flags.DEFINE_boolean("step_progress", True, "On a terminal, show the current sampling step "
                       "on the progress bar (a host callback per step: JAX does not keep "
                       "such programs in the compilation cache, so every run compiles).",
                       flag_values=fv)
  flags.DEFINE_boolean("report", False, "After the run, write report.html into the output "
                       "folder: every image there with its input, settings and sampling plots "
                       "(eval.report).", flag_values=fv)
  return fv


def _module_header(line: str) -> bool:
  """absl's per-module group titles ("eval/run.py:", "upzeroir_jax.flags:")."""
  return line.endswith(":") and not line.startswith("-") and " " not in line


def help_text(usage: str, fv: flags.FlagValues) -> str:
  """`usage` followed by the help of every flag of `fv`."""
  lines = fv.get_help(prefix="  ", include_special_flags=False).splitlines()
  body = [line for line in lines if line.strip() and not _module_header(line.strip())]
  return usage + "\nflags:\n" + "\n".join(body) + "\n"


def prompt_for(src: pathlib.Path, prompt: str, prompt_dir: str | None) -> str:
  """The prompt of input `src`: `prompt`, or with a `prompt_dir` the stripped text of
  `<prompt_dir>/<src stem>.txt` ("" when that file does not exist)."""
  if prompt_dir is None:
    return prompt
  path = pathlib.Path(prompt_dir) / f"{src.stem}.txt"
  try:
    return path.read_text(encoding="utf-8").strip() if path.is_file() else ""
  except UnicodeDecodeError:
    raise RunError(f"{io.shown(path)}: the prompt file is not UTF-8 text; save it as "
                   "UTF-8") from None


def jobs_for(input_path: str, output_path: str, prompt: str = "",
             prompt_dir: str | None = None) -> list[jobs_lib.Job]:
  """The jobs of `upzeroir restore`: one input file, or every image file of a folder.

  A folder's images are its files with an image suffix (.png, .jpg, .jpeg, .bmp, .tif,
  .tiff, .webp; not recursive, hidden files ignored), each written to `<output>/<stem>.png`
  (`jobs.output_names` when stems collide). A single input goes to `output` when that has an
  image suffix, else into the folder `output` as `<stem>.png`. Outputs never replace inputs,
  and outputs named here never go into a folder holding an input (`jobs.check_outputs`).

  Raises:
    RunError: missing input, folder without images, or an unusable output path.
  """
  src, dst = pathlib.Path(input_path), pathlib.Path(output_path)
  if prompt and prompt_dir:
    raise RunError("give --prompt or --prompt_dir, not both")
  if prompt_dir is not None and not pathlib.Path(prompt_dir).is_dir():
    raise RunError(f"--prompt_dir={prompt_dir}: no such folder")
  if not src.exists():
    raise RunError(f"--input={input_path}: no such file or folder")
  if dst.resolve() == src.resolve():
    raise RunError(f"--output={output_path} is the input itself; choose another "
                            "output so that the originals are kept")
  if src.is_dir():
    files, skipped = jobs_lib.list_images(src, f"--input={input_path}")
    for line in skipped:
      print(f"{PROG}: {line}", file=sys.stderr)
    if not files:
      raise RunError(f"--input={input_path}: no image files "
                              f"({', '.join(sorted(io.IMAGE_SUFFIXES))}) in this folder")
    if dst.suffix.lower() in io.IMAGE_SUFFIXES or dst.is_file():
      raise RunError(f"--output={output_path}: the input is a folder, so the output "
                              "must be a folder too")
    out = [jobs_lib.Job(name=f.name, source=f, output=dst / name,
                        prompt=prompt_for(f, prompt, prompt_dir))
           for f, name in zip(files, jobs_lib.output_names(files))]
    jobs_lib.check_outputs(out)
    return out
  kind = io.kind_of(src.stat().st_mode)
  if kind is not None:
    raise RunError(f"--input={input_path}: is {kind}, not a regular file")
  named_by_run = dst.suffix.lower() not in io.IMAGE_SUFFIXES
  if named_by_run:
    if dst.suffix and not dst.is_dir():
      raise RunError(f"--output={output_path}: unknown image suffix {dst.suffix!r}; "
                     f"use one of {', '.join(sorted(io.IMAGE_SUFFIXES))} or a folder")
    dst = dst / jobs_lib.output_names([src])[0]
  out = [jobs_lib.Job(name=src.name, source=src, output=dst,
                      prompt=prompt_for(src, prompt, prompt_dir))]
  jobs_lib.check_outputs(out, named_by_run=named_by_run)
  return out


def _error(prog: str, message: str) -> int:
  print(f"{prog}: error: {message}", file=sys.stderr)
  return 2


def restore_checked(prog: str, fv: flags.FlagValues, jobs: Sequence[jobs_lib.Job],
                    task: str, settings: pipeline.Settings, record: dict,
                    progress: progress_lib.Progress | None = None,
                    report_steps: bool = False) -> pipeline.Summary:
  """Checks every job without a model (`preflight.check`), names the unusable ones up front on
  stderr, then loads the models (--model, --vgg, --arniqa, --scorer; not when nothing is left
  to restore) and restores the others with `task`'s preset (`flags.task_configs`). For
  `auto.AUTO` each input is identified during the check (`auto.inspect`, the image read once
  there) and restored with its own task's preset; each resume check uses the image's own
  settings, so a changed identification or `--task` is noticed. The caller holds the output
  folders (`jobs.lock_outputs`).
  `progress` reports the phases ("loading models", compiling or loading) and images (default: a
  `progress.Progress` on stderr of process 0); `report_steps` adds each sampling step.

  Returns:
    The run's `pipeline.Summary`, the failures found before the run first.

  Raises:
    RunError: a finished output made with other settings, missing weights, bad settings
      (also `--grid=upsample` with a noisy task, `pipeline.check_task`).
  """
  pipeline.check_task(settings, task)
  presets = flags_lib.task_configs(fv, task)
  config = auto.per_image(presets) if task == auto.AUTO else presets[task]
  configs = pipeline.config_of(config)
  checked = preflight.check(
      jobs, settings, lambda job: pipeline.resume_key(configs(job), settings, fv.model,
                                                      fv.scorer),
      inspect=auto.inspect if task == auto.AUTO else None)
  if all(records.finished(job.output) and not settings.overwrite for job in checked.ready):
    return pipeline.Summary(skipped=[job.name for job in checked.ready] + list(checked.skipped),
                            failed=list(checked.failed))
  for _, message in checked.failed:
    print(f"{prog}: cannot restore {message}; restoring the others", file=sys.stderr)
  if progress is None:
    import jax
    progress = progress_lib.Progress(0, prog=prog, enabled=jax.process_index() == 0)
  with progress.phase(progress_lib.LOADING):
    loaded = flags_lib.load_models(fv)
  summary = pipeline.run(checked.ready, loaded, config, settings, progress=progress,
                         report_steps=report_steps, record=record)
  summary.failed[:0] = checked.failed
  summary.skipped += checked.skipped
  return summary


def _restore(fv: flags.FlagValues) -> int:
  smoke.apply_defaults(fv)
  jobs = jobs_for(fv.input, fv.output, fv.prompt, fv.prompt_dir)
  if fv.report:  # the report page is a file the run writes too
    from upzeroir_jax.report import page
    jobs_lib.check_outputs(jobs, named_by_run=False, written=[
        folder / page.REPORT for folder in {job.output.parent for job in jobs}])
  settings = flags_lib.settings_from_flags(fv, bits=int(fv.bits))
  report = progress_lib.Progress(0, prog=PROG)
  with jobs_lib.lock_outputs(job.output.parent for job in jobs):
    summary = restore_checked(PROG, fv, jobs, fv.task, settings,
                              record={"command": "upzeroir restore"}, progress=report,
                              report_steps=fv.step_progress and report.interactive)
  # The failures first, then the summary and the smoke-test notice: the run's last words.
  if len(summary.failed) == 1:
    _error(PROG, summary.failed[0][1])
  elif summary.failed:
    _error(PROG, f"{len(summary.failed)} images could not be restored:")
    for _, message in summary.failed:
      print(f"  {message}", file=sys.stderr)
  print(f"{PROG}: restored {len(summary.done)}, skipped {len(summary.skipped)} already "
        f"finished (--overwrite redoes them), failed {len(summary.failed)}; outputs in "
        f"{fv.output}")
  if fv.report and (summary.done or summary.skipped):
    _write_reports({job.output.parent for job in jobs})
  if fv.model == loading.SMOKE_TEST_MODEL:
    print(f"{PROG}: SMOKE TEST: --model=tiny has random weights; the outputs only show that "
          "the pipeline runs, they are not restorations")
  return 2 if summary.failed else 0


def _write_reports(folders: set[pathlib.Path]) -> None:
  """`report.write` of each output folder; imported only here, so restoring never loads it."""
  from upzeroir_jax import report
  for folder in sorted(folders):
    print(f"{PROG}: report -> {report.write(folder)}")


def run_main(prog: str, usage: str, fv: flags.FlagValues, argv: Sequence[str] | None,
             body: Callable[[flags.FlagValues], int], *, command: str | None = None) -> int:
  """Parses `argv` into `fv` and runs `body(fv)`, mapping problems to exit codes.

  Shared by `upzeroir` and the eval binaries. Defines `--verbose` in `fv` unless it has one.
  `--help` prints the help (exit 0), no arguments print it too (exit 2), `--version` the
  versions (exit 0). The positional arguments must be `command` alone (`upzeroir restore`) or,
  with `command` None, none. After parsing, `startup.configure` applies `--compilation_cache`
  and hides XLA's logs unless `--verbose`; on a terminal, log lines read `<prog>: ...` unless
  `--verbose` (`startup.terminal_logs`). Flag errors and `ValueError`s (bad input, missing or
  unreadable weights) print one line `<prog>: error: ...` (exit 2; all missing weights files
  are listed on the lines after it); other exceptions one line (exit 1); a traceback only with
  `--verbose`. Ctrl-C prints one line and exits 130: with `argv` None (the process's own
  command line) at once, without waiting for a compiled call still running
  (`interrupt.exit_now`).
  """
  if "verbose" not in fv:
    flags.DEFINE_boolean("verbose", False, "Log details; show XLA's logs and tracebacks.",
                         flag_values=fv)
  whole_process = argv is None
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("-h", "--help", "-help", "--helpfull", "help") for a in argv[1:]):
    print(help_text(usage, fv))
    return 0
  if "--version" in argv[1:]:
    import jax
    print(f"{prog} (upzeroir-jax) {upzeroir_jax.__version__}, jax {jax.__version__}")
    return 0
  if len(argv) < 2:
    print(help_text(usage, fv))
    return 2
  verbose = "--verbose" in argv[1:]
  try:
    rest = fv(argv)
    if not flags.FLAGS.is_parsed():  # this binary's flags live in `fv`; absl's global set is empty
      flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    startup.configure(fv)
    _check_positional(prog, command, rest[1:])
    with startup.terminal_logs(prog, verbose):
      return body(fv)
  except flags.Error as e:
    return _error(prog, f"{e} (see `{prog} --help`)")
  except (ValueError, FileNotFoundError) as e:
    if verbose:
      traceback.print_exc()
    details = getattr(e, "details", None)
    if details:
      _error(prog, getattr(e, "headline", "") or " ".join(str(e).split()))
      for line in details:
        print(f"  {line}", file=sys.stderr)
      return 2
    return _error(prog, " ".join(str(e).split()) or type(e).__name__)
  except KeyboardInterrupt:
    print(f"{prog}: interrupted; run the same command again to resume", file=sys.stderr)
    if whole_process and interrupt.busy():
      interrupt.exit_now(130)
    return 130
  except Exception as e:  # one line instead of a traceback, unless --verbose
    if verbose:
      raise
    message = " ".join(str(e).split())[:300]
    print(f"{prog}: internal error: {type(e).__name__}: {message} (run with --verbose for "
          "the traceback)", file=sys.stderr)
    return 1


def _check_positional(prog: str, command: str | None, args: list[str]) -> None:
  """Raises `ValueError` unless the positional arguments are `[command]` (none without one)."""
  if command is None and args:
    raise ValueError(f"unexpected arguments: {' '.join(args)}")
  if command is not None and args != [command]:
    raise ValueError(f"unknown command {' '.join(args) or '(none)'!r}; the command is "
                     f"`{prog} {command}` (see `{prog} --help`)")


def main(argv: Sequence[str] | None = None) -> int:
  """Runs `upzeroir` with `argv` (default `sys.argv`) and returns the exit code."""
  return run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _restore,
                  command="restore")


if __name__ == "__main__":
  sys.exit(main())
