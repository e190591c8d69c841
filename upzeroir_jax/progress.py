"""What a restoration run is doing, on stderr: phases, then images, optionally sampling steps.

A run announces its phases ("loading models", then each batch program: "compiling" or
"loading compiled program from cache", as JAX reports it, `compile_watch`) as they start and
end, then counts restored images. The rate and the time left (ETA) come from restore time only:
compilation and file reading are timed apart, so both are right from the first finished image
on (time left = images left × seconds per image so far).

- stderr a terminal: one line per phase, a live line with a spinner and the elapsed time while
  a program is prepared (XLA may compile for minutes), and a tqdm bar for the images, whose
  postfix shows the rate, the time left and, with per-step reporting, the current sampling step;
- stderr not a terminal (batch jobs, log files): one plain absl log line per phase (and one a
  minute while XLA compiles) and per finished image, no bar.

Sampling steps are counted between the driver's chunks (`steps_done`, no host callback in any
compiled program); `on_step` is the host callback `restore(..., on_step=progress.on_step)`
takes, for a call of `restore` itself or a run sharded over several devices, whose program JAX
then cannot keep in its persistent cache.
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

from upzeroir_jax import compile_watch

LOADING = "loading models"
# What the live line says in each state of `compile_watch.Watch`.
PREPARING = "preparing the program"
COMPILING = "compiling"
LOADING_CACHED = "loading compiled program from cache"
LIVE_TEXT = {compile_watch.PREPARING: PREPARING, compile_watch.LOOKING_UP: LOADING_CACHED,
             compile_watch.COMPILING: COMPILING, compile_watch.LOADED: LOADING_CACHED}
SPINNER = "|/-\\"
TICK_SECONDS = 0.25  # live line redraw period on a terminal
LOG_EVERY_SECONDS = 60.0  # off a terminal: one "still compiling" line this often


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
    self.steps = 0
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
    """Announces `name` (e.g. `LOADING`) and its duration when it ends."""
    self._say(f"{name} ...")
    start = self.clock()
    yield
    self._say(f"{name}: done in {self.clock() - start:.1f} s")

  @contextlib.contextmanager
  def compiling(self, cacheable: bool = True) -> Iterator[Callable[..., None]]:
    """Reports the preparation of a batch program inside the block: traced, then compiled by
    XLA, loaded from JAX's persistent cache, or reused from this process (`compile_watch`).
    The block calls the function it is given once the program is lowered (between `.lower()`
    and `.compile()`), with the program's module name (`compile_watch.Watch.lowered`). A terminal gets a live line with a spinner and the elapsed time, a log
    one line per state and one a minute while compiling; the end says what happened and how
    long it took. `cacheable` False: a program JAX never saves (host callbacks of per-step
    progress), said at the end."""
    if not self.enabled:
      yield lambda program=None: None
      return
    report = _CompileReport(self, cacheable)
    with compile_watch.watch(report.changed) as watch:
      report.begin(watch)
      stop = threading.Event()
      ticker = threading.Thread(target=report.run, args=(stop,), daemon=True)
      ticker.start()
      try:
        yield report.lowered
      except BaseException:
        report.abandon()
        raise
      finally:
        stop.set()
        ticker.join()
    report.finish()

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

  def steps_done(self, count: int) -> None:
    """Counts `count` sampling steps the run's images just took (one chunk of the driver,
    `driver.restore_queue`'s `on_chunk`) and shows the run's total on the bar."""
    with self._lock:
      self.steps += count
      self.step_text = f"{self.steps} steps"
      if self.enabled and self._bar is not None:
        self._bar.set_postfix_str(self._postfix())

  def close(self) -> None:
    """Ends the bar (the terminal keeps its last state)."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None


class _CompileReport:
  """The live report of one program's preparation (`Progress.compiling`); thread-safe."""

  def __init__(self, progress: Progress, cacheable: bool):
    self.p, self.cacheable = progress, cacheable
    self.start = self.last_log = progress.clock()
    self.traced_s = 0.0
    self.watch: compile_watch.Watch | None = None
    self.frame = 0
    self.lock = threading.Lock()

  def begin(self, watch: compile_watch.Watch) -> None:
    self.watch = watch
    if not self.p.interactive:
      logging.info("%s ...", LIVE_TEXT[watch.state])
    self.tick()

  def lowered(self, program: str | None = None) -> None:
    """The program (JAX's module name, `compile_watch.Watch.lowered`) is traced and lowered;
    called from the compiling thread."""
    self.traced_s = self.p.clock() - self.start
    self.watch.lowered(program)

  def changed(self, state: str) -> None:
    """Called by the watch (from the compiling thread) when JAX reports a new state."""
    if self.watch is None:
      return
    if not self.p.interactive and state == compile_watch.COMPILING:
      logging.info("%s ...", COMPILING)
    self.tick()

  def run(self, stop: threading.Event) -> None:
    while not stop.wait(TICK_SECONDS):
      self.tick()

  def tick(self) -> None:
    """Redraws the live line (terminal), or logs a "still compiling" line once a minute."""
    with self.lock:
      now = self.p.clock()
      state = self.watch.state
      if self.p.interactive:
        self.frame += 1
        self._write(f"\r{self.p.prog}: {LIVE_TEXT[state]} {SPINNER[self.frame % len(SPINNER)]} "
                    f"{format_seconds(now - self.start)}\x1b[K")
      elif state == compile_watch.COMPILING and now - self.last_log >= LOG_EVERY_SECONDS:
        self.last_log = now
        logging.info("%s: %s so far", COMPILING, format_seconds(now - self.start))

  def outcome(self) -> str:
    """What happened, with the time it took (the phase's closing line)."""
    seconds = self.p.clock() - self.start
    took = f"{seconds:.1f} s"
    if self.traced_s >= 1.0:
      took += f" ({self.traced_s:.1f} s of it tracing the model)"
    if self.watch.state == compile_watch.LOADED:
      return f"loaded compiled program from cache in {took}"
    if self.watch.compile_called:
      note = ("; saved in the compilation cache for later runs" if self.watch.saved else
              "" if self.cacheable else
              "; not saved in the compilation cache: per-step progress is on")
      return f"compiled in {took}{note}"
    return f"program ready in {took}, compiled earlier in this process"

  def finish(self) -> None:
    with self.lock:
      if self.p.interactive:
        self._write(f"\r{self.p.prog}: {self.outcome()}\x1b[K\n")
      else:
        logging.info("%s", self.outcome())

  def abandon(self) -> None:
    """Ends the live line without a verdict (an interrupted or failed preparation)."""
    with self.lock:
      if self.p.interactive:
        self._write("\r\x1b[K")

  def _write(self, text: str) -> None:
    self.p.stream.write(text)
    self.p.stream.flush()
