"""Whether JAX is compiling a program or loading it from its persistent compilation cache.

`jax.jit(...).lower(...).compile()` first looks the program up in the persistent cache
(`startup`: on by default) and compiles it with XLA only when it is not there. JAX says which,
as it happens, through:

- its monitoring events (`jax.monitoring`): `/jax/compilation_cache/compile_requests_use_cache`
  when the lookup starts, `/jax/compilation_cache/cache_hits` when the program was loaded,
  `/jax/compilation_cache/cache_misses` when a compiled program was saved to the cache, and
  the duration event `/jax/core/compile/backend_compile_duration` after a program was compiled
  or loaded (not when it was reused from memory);
- the log records "PERSISTENT COMPILATION CACHE MISS for '<program>'" and "Persistent
  compilation cache hit for '<program>'" of its `jax._src.compiler` logger, at DEBUG level: the
  miss is the only signal given before XLA starts compiling, and both name the program. While watching, that logger is
  opened to DEBUG and a filter reads its records; the ones below its former level are dropped
  there, so nothing new reaches any log.

A program compiled earlier in the same process is reused from memory without any of these.
Tracing and compiling a program can run small programs of their own (constants, key
derivations, type conversions), each with these signals; only the signals after
`Watch.lowered()` (called between `.lower()` and `.compile()`) count, and of the named ones
only those of the program it names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging as std_logging
import threading
from collections.abc import Callable, Iterator

PREPARING = "preparing"  # tracing and lowering; the cache not consulted yet
LOOKING_UP = "looking up"  # reading the persistent cache
COMPILING = "compiling"  # XLA compiling (a cache miss, or the cache off)
LOADED = "loaded"  # loaded from the persistent cache

_COMPILER_LOGGER = "jax._src.compiler"
_MISS_RECORD = "PERSISTENT COMPILATION CACHE MISS"
_HIT_RECORD = "Persistent compilation cache hit"
_LOOKUP = "/jax/compilation_cache/compile_requests_use_cache"
_HIT = "/jax/compilation_cache/cache_hits"
_SAVED = "/jax/compilation_cache/cache_misses"
_COMPILE_STEP = "/jax/core/compile/backend_compile_duration"


@dataclasses.dataclass
class Watch:
  """What JAX did so far for the program being prepared (read from another thread).

  Attributes:
    state: `PREPARING`, `LOOKING_UP`, `COMPILING` or `LOADED`.
    compile_called: a program went through JAX's compile step (compiled, or loaded from the
      cache); False while programs are only reused from this process's memory.
    saved: a compiled program was written to the persistent cache.
  """

  state: str = PREPARING
  compile_called: bool = False
  saved: bool = False
  on_change: Callable[[str], None] | None = None
  listening: bool = False
  program: str | None = None

  def lowered(self, program: str | None = None) -> None:
    """The program is traced and lowered; what follows is its compilation (or loading).
    `program`: its module name as JAX logs it (`jit_<function name>`); None: any."""
    self.program, self.listening = program, True
    if not cache_on():
      self._set(COMPILING)

  def _set(self, state: str) -> None:
    if self.listening and state != self.state:
      self.state = state
      if self.on_change is not None:
        self.on_change(state)


class _MissFilter(std_logging.Filter):
  """Notes the cache miss and hit records; passes only records the logger's former level let
  through."""

  def __init__(self, watch: Watch, level: int):
    super().__init__()
    self.watch, self.level = watch, level

  def filter(self, record: std_logging.LogRecord) -> bool:
    message = str(record.msg)
    if message.startswith((_MISS_RECORD, _HIT_RECORD)):
      name = record.args[0] if isinstance(record.args, tuple) and record.args else None
      if self.watch.program in (None, name):
        self.watch._set(COMPILING if message.startswith(_MISS_RECORD) else LOADED)
    return record.levelno >= self.level


def cache_on() -> bool:
  """True when JAX's persistent compilation cache is enabled and has a folder."""
  import jax

  return bool(jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir)


@contextlib.contextmanager
def watch(on_change: Callable[[str], None] | None = None) -> Iterator[Watch]:
  """Watches the compilation of one program inside the block; `on_change(state)` on each
  change of state. The state is `PREPARING` until `Watch.lowered()`, then `COMPILING` at once
  when the persistent cache is off (nothing can be loaded), else as JAX reports.
  """
  import jax

  w = Watch(on_change=on_change)
  lock = threading.Lock()

  def event(name: str, **_) -> None:
    with lock:
      if name == _LOOKUP and w.state == PREPARING:
        w._set(LOOKING_UP)
      elif name == _HIT and w.program is None:
        w._set(LOADED)
      elif name == _SAVED and w.listening:
        w.saved = True

  def duration(name: str, _seconds: float, **_) -> None:
    if name == _COMPILE_STEP and w.listening:
      w.compile_called = True

  logger = std_logging.getLogger(_COMPILER_LOGGER)
  own_level, level = logger.level, logger.getEffectiveLevel()
  miss_filter = _MissFilter(w, level)
  logger.addFilter(miss_filter)
  logger.setLevel(std_logging.DEBUG)
  jax.monitoring.register_event_listener(event)
  jax.monitoring.register_event_duration_secs_listener(duration)
  try:
    yield w
  finally:
    jax.monitoring.unregister_event_listener(event)
    jax.monitoring.unregister_event_duration_listener(duration)
    logger.removeFilter(miss_filter)
    logger.setLevel(own_level)
