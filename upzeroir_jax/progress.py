"""What a restoration run is doing, on stderr: phases, then images, optionally sampling steps.

A run announces its phases ("loading models", "compiling (first run only; cached
afterwards)") as they start and end, then counts restored images. The rate and the time left
(ETA) come from restore time only: compilation and file reading are timed apart, so both are
right from the first finished image on (time left = images left × seconds per image so far).

- stderr a terminal: one line per phase and a tqdm bar for the images, whose postfix shows the
  rate, the time left and, with per-step reporting, the current sampling step;
- stderr not a terminal (batch jobs, log files): one plain absl log line per phase and per
  finished image, no bar.

Per-step reporting is a host callback inside the compiled sampling loop (`restore(...,
on_step=progress.on_step)`); it is off unless asked for, because each step then waits for the
host (see `step_callback_wanted`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import numpy as np
from absl import logging

COMPILING = "compiling (first run only; cached afterwards)"
LOADING = "loading models"


def format_seconds(seconds: float | None) -> str:
  """`75.2` -> "1:15", `3725` -> "1:02:05", None -> "?" (h:mm:ss, leading zero units dropped)."""
  if seconds is None or not math.isfinite(seconds):
    return "?"
  total = round(seconds)
  hours, rest = divmod(total, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def is_terminal(stream: Any) -> bool:
  """True when `stream` is an interactive terminal (a tty)."""
  isatty = getattr(stream, "isatty", None)
  try:
    return bool(isatty and isatty())
  except ValueError:  # closed stream
    return False


def step_callback_wanted(requested: bool | None, stream: Any) -> bool:
  """Whether to report sampling steps: as `requested`, or by default only on a terminal."""
  return is_terminal(stream) if requested is None else requested


class Progress:
  """Phases, restored images with rate and time left, and sampling steps of one run.

  Args:
    total: images this run restores (finished ones that are skipped not counted).
    prog: program name that prefixes the phase lines on a terminal.
    stream: where a terminal's lines and bar go (default: stderr).
    interactive: bar (True) or log lines (False); default: whether `stream` is a terminal.
    enabled: False makes every method a no-op (e.g. on all but one process of a multi-host run).
    clock: seconds since some fixed time (`time.perf_counter`); a fake one in tests.
  """

  def __init__(self, total: int, *, prog: str = "upzeroir", stream: TextIO | None = None,
               interactive: bool | None = None, enabled: bool = True,
               clock: Callable[[], float] = time.perf_counter):
    self.total = total
    self.prog = prog
    self.stream = stream if stream is not None else sys.stderr
    self.interactive = is_terminal(self.stream) if interactive is None else interactive
    self.enabled = enabled
    self.clock = clock
    self.done = 0
    self.restore_seconds = 0.0
    self.step_text = ""
    self._bar = None
    self._lock = threading.Lock()

  def _say(self, text: str) -> None:
    if not self.enabled:
      return
    if self.interactive:
      line = f"{self.prog}: {text}"
      if self._bar is not None:
        self._bar.write(line, file=self.stream)
      else:
        print(line, file=self.stream, flush=True)
    else:
      logging.info("%s", text)

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    """Announces `name` ("loading models", `COMPILING`, ...) and its duration when it ends."""
    self._say(f"{name} ...")
    start = self.clock()
    yield
    self._say(f"{name}: done in {self.clock() - start:.1f} s")

  @property
  def seconds_per_image(self) -> float | None:
    """Mean restore time per finished image (compilation excluded); None before the first."""
    return self.restore_seconds / self.done if self.done else None

  @property
  def eta_seconds(self) -> float | None:
    """Seconds until the last image is restored at the rate so far; None before the first."""
    per = self.seconds_per_image
    return None if per is None else per * (self.total - self.done)

  def _postfix(self) -> str:
    per = self.seconds_per_image
    parts = [] if per is None else [f"{per:.1f} s/img", f"{format_seconds(self.eta_seconds)} left"]
    if self.step_text:
      parts.append(self.step_text)
    return ", ".join(parts)

  def start_images(self) -> None:
    """Starts counting images (on a terminal: shows the bar at 0)."""
    if not (self.enabled and self.interactive) or self._bar is not None:
      return
    from tqdm import tqdm

    self._bar = tqdm(total=self.total, unit="img", desc="restoring", file=self.stream,
                     bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed} {postfix}",
                     dynamic_ncols=True)

  def images_done(self, names: Sequence[str], seconds: float,
                  failed: Sequence[str] = ()) -> None:
    """Counts a finished batch: `names` restored and `failed` not, in `seconds` of restore
    time (the batch's compiled call, not compiling)."""
    count = len(names) + len(failed)
    with self._lock:
      first = self.done
      self.done += count
      self.restore_seconds += seconds
      self.step_text = ""
    if not self.enabled:
      return
    if self.interactive:
      self.start_images()
      self._bar.set_postfix_str(self._postfix(), refresh=False)
      self._bar.update(count)
      return
    per = seconds / max(count, 1)
    left = format_seconds(self.eta_seconds)
    for k, name in enumerate(names):
      logging.info("restored %d/%d %s (%.1f s per image; %s left)", first + k + 1, self.total,
                   name, per, left)
    for k, name in enumerate(failed):
      logging.info("failed %d/%d %s (listed at the end)", first + len(names) + k + 1,
                   self.total, name)

  def on_step(self, index: Any, steps: Any) -> None:
    """Host callback of the sampling loop: step `index` (0-based) of `steps` just finished.

    Called from XLA's callback thread, once per image of a batch or with `[B]` indices.
    """
    text = f"step {int(np.max(index)) + 1}/{int(steps)}"
    with self._lock:
      if text == self.step_text:
        return
      self.step_text = text
      if self.enabled and self._bar is not None:
        self._bar.set_postfix_str(self._postfix())

  def close(self) -> None:
    """Ends the bar (the terminal keeps its last state)."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
