"""Process settings of the `upzeroir` CLI and the eval binaries: compilation cache, XLA's logs.

- JAX's persistent compilation cache is on by default, in a user cache folder
  (`default_cache_dir()`: `$XDG_CACHE_HOME/upzeroir-jax/jax`, else `~/.cache/upzeroir-jax/jax`),
  so only the first run of a model, size and setting compiles; later runs load the compiled
  program from disk. `--compilation_cache=DIR` moves it, `--compilation_cache=` (empty) turns it
  off. Programs with host callbacks (per-step progress on several devices) are never cached by
  JAX.
- XLA's own log lines (e.g. the multi-line "Very slow compile?" banner of long compilations)
  are hidden unless `--verbose`: JAX's C++ log threshold is raised to FATAL.
- On a terminal, log lines read as the program's own (`<prog>: message`, `<prog>: warning:
  message`) instead of absl's log format (`I1207 21:18:38.058576 1234 auto.py:80] message`);
  `--verbose`, and output that is not a terminal (log files, batch jobs), keep the log format.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import pathlib
import sys
from collections.abc import Iterator

from absl import flags, logging

CACHE_FLAG = "compilation_cache"
# Every program goes to disk (JAX's default skips those compiled in under 1 s): a run's small
# programs (the driver's init and finish) are then loaded too, and a second run compiles
# nothing.
MIN_COMPILE_SECONDS = 0.0


def default_cache_dir() -> pathlib.Path:
  """`$XDG_CACHE_HOME/upzeroir-jax/jax`, or `~/.cache/upzeroir-jax/jax` without XDG_CACHE_HOME."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "upzeroir-jax" / "jax"


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """Defines `--compilation_cache` on `fv`."""
  flags.DEFINE_string(CACHE_FLAG, str(default_cache_dir()), "Folder of JAX's persistent "
                      "compilation cache (compiled programs reused by later runs); empty: off.",
                      flag_values=fv)
  return fv


def enable_compilation_cache(folder: str | os.PathLike | None) -> pathlib.Path | None:
  """Points JAX's persistent compilation cache at `folder` (created); None or "" turns it off.

  A folder that cannot be created only costs the cache: a warning is logged and the run
  compiles as without it.

  Returns:
    The cache folder in use, or None when the cache is off.
  """
  import jax

  if not folder:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  path = pathlib.Path(folder).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache off: cannot create %s (%s)", path, e.strerror or e)
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path


def quiet_xla(verbose: bool) -> None:
  """Hides XLA's C++ log lines (compile banners, warnings) unless `verbose`.

  Sets `jax_logging_level` to CRITICAL, which raises the C++ threshold to FATAL (and JAX's own
  Python loggers to CRITICAL; the run's errors still reach the user as exceptions). With
  `verbose` JAX's defaults stay (C++ warnings and errors shown).
  """
  import jax

  if not verbose:
    jax.config.update("jax_logging_level", "CRITICAL")


def configure(fv: flags.FlagValues) -> pathlib.Path | None:
  """Applies the settings of parsed flags `fv`: XLA's logs by `--verbose`, and the cache of
  `--compilation_cache` where `fv` defines it (binaries without it leave JAX's default, off).

  Returns:
    The compilation cache folder in use, or None.
  """
  quiet_xla(bool(fv["verbose"].value) if "verbose" in fv else False)
  if CACHE_FLAG not in fv:
    return None
  return enable_compilation_cache(fv[CACHE_FLAG].value)


class PlainFormatter(std_logging.Formatter):
  """`<prog>: message`, `<prog>: warning: message`, `<prog>: error: message`."""

  def __init__(self, prog: str):
    super().__init__()
    self.prog = prog

  def format(self, record: std_logging.LogRecord) -> str:
    level = ("" if record.levelno < std_logging.WARNING else
             "warning: " if record.levelno < std_logging.ERROR else "error: ")
    return f"{self.prog}: {level}{record.getMessage()}"


@contextlib.contextmanager
def terminal_logs(prog: str, verbose: bool) -> Iterator[None]:
  """Inside the block, absl's log lines are `PlainFormatter(prog)` lines when stderr is a
  terminal and not `verbose` (module docstring); the former format is restored after."""
  from upzeroir_jax import progress

  handler = logging.get_absl_handler().python_handler
  if verbose or not progress.is_terminal(sys.stderr):
    yield
    return
  before = handler.formatter
  handler.setFormatter(PlainFormatter(prog))
  try:
    yield
  finally:
    handler.setFormatter(before)
