"""Ctrl-C that works during long compiled calls.

Python runs its SIGINT handler only between bytecodes of the main thread, so a compiled JAX
call (a sampling loop of minutes, or an XLA compilation) ignores Ctrl-C until it returns.
`call` runs such work in a worker thread while the main thread waits in short, interruptible
slices: Ctrl-C raises `KeyboardInterrupt` in the main thread at once, which cleans up (the
caller's `finally` blocks and atomic file writes) and leaves the worker to die with the process.
`exit_now` then ends the process without waiting for the worker (exit code 130).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
WORKER_PREFIX = "upzeroir-compute"
_WAIT_SLICE_S = 0.2


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
  """`fn(*args, **kwargs)` in a daemon worker thread; returns its result or raises its error.

  Ctrl-C (KeyboardInterrupt) reaches the caller within `_WAIT_SLICE_S` seconds even while `fn`
  is inside compiled code; the worker is then abandoned (it stops with the process).
  """
  result: dict[str, Any] = {}
  finished = threading.Event()

  def work() -> None:
    try:
      result["value"] = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 (handed to the caller's thread)
      result["error"] = e
    finally:
      finished.set()

  worker = threading.Thread(target=work, name=f"{WORKER_PREFIX}-{getattr(fn, '__name__', 'fn')}",
                            daemon=True)
  worker.start()
  # An Event, not `worker.join`: a join interrupted by Ctrl-C marks a running thread as
  # stopped on Python < 3.13, which would hide it from `busy`.
  while not finished.wait(_WAIT_SLICE_S):
    pass
  if "error" in result:
    raise result["error"]
  return result["value"]


def busy() -> bool:
  """True while a worker started by `call` is still running (e.g. after Ctrl-C)."""
  return any(t.name.startswith(WORKER_PREFIX) and t.is_alive() for t in threading.enumerate())


def exit_now(code: int) -> None:
  """Flushes stdout and stderr and ends the process with `code` at once, without waiting for
  abandoned workers or running interpreter shutdown (which could wait for the compiled call)."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)
