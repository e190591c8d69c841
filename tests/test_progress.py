"""Progress reporting: phases, rate and time left from restore time only, log lines off a tty."""

import io as std_io
import logging
import re
import threading
import time

import jax
import numpy as np
import pytest

from upzeroir_jax import compile_watch, progress


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class Tty(std_io.StringIO):
  def isatty(self):
    return True


@pytest.mark.parametrize("seconds,text", [(0, "0:00"), (59.4, "0:59"), (75.2, "1:15"),
                                          (3725, "1:02:05"), (None, "?"), (float("nan"), "?")])
def test_format_seconds(seconds, text):
  assert progress.format_seconds(seconds) == text


def test_rate_and_time_left_exclude_compilation_and_are_right_after_the_first_image():
  clock = FakeClock()
  out = Tty()
  p = progress.Progress(0, stream=out, clock=clock)
  assert p.interactive
  with p.phase(progress.LOADING):
    clock.now += 7.0
  p.total = 5
  with p.phase("compiling"):
    clock.now += 300.0  # a long first compilation must not enter the rate
  assert p.seconds_per_image is None and p.eta_seconds is None
  p.images_done(["a.png"], 12.0)
  # One image in 12 s: 4 left -> 48 s, whatever the compilation took.
  assert p.seconds_per_image == pytest.approx(12.0)
  assert p.eta_seconds == pytest.approx(48.0)
  p.images_done(["b.png", "c.png"], 30.0)  # a batch of two: 42 s over 3 images
  assert p.seconds_per_image == pytest.approx(14.0)
  assert p.eta_seconds == pytest.approx(28.0)
  p.close()
  text = out.getvalue()
  assert "upzeroir: loading models ..." in text
  assert "upzeroir: loading models: done in 7.0 s" in text
  assert "upzeroir: compiling: done in 300.0 s" in text
  assert "3/5" in text and "14.0 s/img" in text and "0:28 left" in text


def test_one_log_line_per_image_when_not_a_terminal(caplog):
  out = std_io.StringIO()
  p = progress.Progress(3, stream=out)
  assert not p.interactive
  with caplog.at_level(logging.INFO):
    with p.phase(progress.LOADING):
      pass
    p.images_done(["x.png", "y.png"], 20.0)
    p.images_done(["z.png"], 4.0)
  p.close()
  assert out.getvalue() == ""  # no bar, no terminal control characters
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0] == f"{progress.LOADING} ..."
  assert lines[1].startswith(f"{progress.LOADING}: done in ")
  assert lines[2:] == ["restored 1/3 x.png (10.0 s per image; 0:10 left)",
                       "restored 2/3 y.png (10.0 s per image; 0:10 left)",
                       "restored 3/3 z.png (4.0 s per image; 0:00 left)"]


def test_disabled_progress_says_nothing(caplog):
  out = Tty()
  p = progress.Progress(2, stream=out, enabled=False)
  with caplog.at_level(logging.INFO):
    with p.phase(progress.LOADING):
      pass
    with p.compiling() as lowered:
      lowered()
      jax.monitoring.record_event(HIT)
    p.images_done(["a"], 1.0)
    p.on_step(np.int32(0), np.int32(4))
  p.close()
  assert out.getvalue() == "" and not caplog.records
  assert p.done == 1  # still counted, for the caller


def test_chunk_steps_add_up_on_the_bar():
  """The driver reports the steps each chunk took; the bar shows the run's total."""
  out = Tty()
  p = progress.Progress(2, stream=out)
  p.start_images()
  p.steps_done(12)
  p.steps_done(7)
  assert p.steps == 19 and p.step_text == "19 steps"
  p.images_done(["a"], 1.0)
  p.steps_done(3)
  assert p.step_text == "22 steps"
  p.close()
  assert "19 steps" in out.getvalue()


def test_step_callback_shows_the_furthest_step_of_a_batch_from_any_thread():
  out = Tty()
  p = progress.Progress(1, stream=out)
  p.start_images()
  threads = [threading.Thread(target=p.on_step, args=(np.asarray([2, 4], np.int32),
                                                       np.int32(10))) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert p.step_text == "step 5/10"
  p.on_step(np.int32(9), 10)
  assert p.step_text == "step 10/10"
  p.images_done(["a"], 1.0)
  assert p.step_text == ""  # the next batch starts again
  p.close()
  assert "step 5/10" in out.getvalue()


# ---- preparing a batch program: compiling, or loading it from the cache --------------------------
# JAX's own signals (compile_watch), given here through JAX's public monitoring API and the
# compiler's logger exactly as JAX gives them; tests/test_startup.py checks that JAX gives them.

LOOKUP = "/jax/compilation_cache/compile_requests_use_cache"
HIT = "/jax/compilation_cache/cache_hits"
SAVED = "/jax/compilation_cache/cache_misses"
COMPILE_STEP = "/jax/core/compile/backend_compile_duration"


def _miss(program="jit_f"):
  jax.monitoring.record_event(LOOKUP)
  logging.getLogger("jax._src.compiler").debug(
      "PERSISTENT COMPILATION CACHE MISS for '%s' with key %r", program, "k")


def _hit(program="jit_f"):
  logging.getLogger("jax._src.compiler").debug(
      "Persistent compilation cache hit for '%s' with key %r", program, "k")
  jax.monitoring.record_event(HIT)


def _wait_for_tick():
  time.sleep(3 * progress.TICK_SECONDS)


@pytest.fixture
def cache(monkeypatch):
  """Whether the persistent cache is on, as `compile_watch` sees it (default: on)."""
  state = {"on": True}
  monkeypatch.setattr(compile_watch, "cache_on", lambda: state["on"])
  return state


def test_a_miss_shows_compiling_with_a_spinner_and_the_elapsed_time(cache):
  clock, out = FakeClock(), Tty()
  p = progress.Progress(1, stream=out, clock=clock)
  with p.compiling() as lowered:
    _miss()  # a small program run while tracing: not the one being prepared
    clock.now += 5.0
    _wait_for_tick()
    assert out.getvalue().rsplit("\r", 1)[-1].startswith("upzeroir: preparing the program ")
    lowered()
    _miss()
    clock.now += 90.0
    _wait_for_tick()
    live = out.getvalue().rsplit("\r", 1)[-1]
    assert re.fullmatch(r"upzeroir: compiling [|/\\-] 1:35\x1b\[K", live), live
    jax.monitoring.record_event_duration_secs(COMPILE_STEP, 95.0)
    jax.monitoring.record_event(SAVED)
  text = out.getvalue()
  assert text.endswith("\rupzeroir: compiled in 95.0 s (5.0 s of it tracing the model); saved in "
                       "the compilation cache for later runs\x1b[K\n")
  frames = set(re.findall(r"upzeroir: compiling ([|/\\-]) ", text))
  assert len(frames) >= 2, text  # the spinner turns
  assert "loading compiled program" not in text.rsplit("\r", 2)[-2]


def test_a_hit_says_loading_compiled_program_from_cache(cache):
  clock, out = FakeClock(), Tty()
  p = progress.Progress(1, stream=out, clock=clock)
  with p.compiling() as lowered:
    lowered()
    jax.monitoring.record_event(LOOKUP)
    clock.now += 2.0
    assert out.getvalue().rsplit("\r", 1)[-1].startswith(
        "upzeroir: loading compiled program from cache ")
    jax.monitoring.record_event(HIT)
    jax.monitoring.record_event_duration_secs(COMPILE_STEP, 2.0)
  assert out.getvalue().endswith("\rupzeroir: loaded compiled program from cache in 2.0 s"
                                 "\x1b[K\n")
  assert "compiling" not in out.getvalue()


def test_only_the_named_program_counts(cache):
  """Compiling a program can compile small ones of its own (a type conversion): their misses
  must not turn a cache hit of the program into "compiling"."""
  clock, out = FakeClock(), Tty()
  with progress.Progress(1, stream=out, clock=clock).compiling() as lowered:
    lowered("jit_restore_sharded")
    _miss("jit_convert_element_type")
    _hit("jit_restore_sharded")
    clock.now += 1.0
  text = out.getvalue()
  assert "compiling" not in text
  assert text.endswith("\rupzeroir: loaded compiled program from cache in 1.0 s\x1b[K\n")


def test_without_any_signal_the_program_was_compiled_earlier_in_the_process(cache):
  out = Tty()
  with progress.Progress(1, stream=out, clock=FakeClock()).compiling() as lowered:
    lowered()
  assert out.getvalue().endswith("program ready in 0.0 s, compiled earlier in this process"
                                 "\x1b[K\n")


def test_log_lines_off_a_terminal_say_compiling_and_once_a_minute_how_long(cache, caplog):
  clock = FakeClock()
  p = progress.Progress(1, stream=std_io.StringIO(), clock=clock)
  with caplog.at_level(logging.INFO), p.compiling() as lowered:
    lowered()
    _miss()
    clock.now += 61.0
    _wait_for_tick()
    clock.now += 9.0
    _wait_for_tick()  # not yet another minute: no new line
    jax.monitoring.record_event_duration_secs(COMPILE_STEP, 70.0)
  assert [r.getMessage() for r in caplog.records] == [
    "preparing the program ...", "compiling ...", "compiling: 1:01 so far",
    "compiled in 70.0 s"]
  assert p.stream.getvalue() == ""


def test_with_the_cache_off_it_says_compiling_once_the_program_is_traced(cache, caplog):
  cache["on"] = False
  p = progress.Progress(1, stream=std_io.StringIO(), clock=FakeClock())
  with caplog.at_level(logging.INFO), p.compiling() as lowered:
    lowered()
    jax.monitoring.record_event_duration_secs(COMPILE_STEP, 0.0)
  assert [r.getMessage() for r in caplog.records] == [
    "preparing the program ...", "compiling ...", "compiled in 0.0 s"]


def test_an_interrupted_preparation_clears_the_live_line_and_leaves_no_listener(cache):
  out = Tty()
  compiler_log = logging.getLogger("jax._src.compiler")
  level = compiler_log.level
  with pytest.raises(KeyboardInterrupt), progress.Progress(1, stream=out).compiling() as lowered:
    lowered()
    _miss()
    raise KeyboardInterrupt
  text = out.getvalue()
  assert text.endswith("\r\x1b[K") and "compiled in" not in text
  jax.monitoring.record_event(HIT)  # a listener left behind would redraw the line
  time.sleep(2 * progress.TICK_SECONDS)  # and so would a ticker left running
  assert out.getvalue() == text
  assert compiler_log.filters == [] and compiler_log.level == level


@pytest.mark.parametrize("requested,tty,want", [(None, True, True), (None, False, False),
                                                (True, False, True), (False, True, False)])
def test_step_callback_by_default_only_on_a_terminal(requested, tty, want):
  stream = Tty() if tty else std_io.StringIO()
  assert progress.step_callback_wanted(requested, stream) is want


@pytest.mark.slow
def test_restore_calls_the_step_callback_once_per_step():
  import jax
  import jax.numpy as jnp

  from upzeroir_jax import config, restore
  from upzeroir_jax.models import analytic, vgg

  seen = []

  class Recorder:
    def __call__(self, index, steps):
      seen.append((int(index), int(steps)))

  y = np.full((16, 16, 3), 0.3, np.float32)
  # The exact Gaussian-prior backbone: the whole sampler step, compiled in seconds.
  models = restore.Models(backbone=analytic.from_noisy(jnp.asarray(y), 0.1),
                          vgg_params=vgg.init_random(jax.random.key(1)))
  cfg = config.preset("lowlight", steps=3, dqr=False, pcdm_features=(8, 8, 8),
                      disc_features=(8, 8, 8))
  out = restore.restore(models, y, jax.random.key(2), cfg, on_step=Recorder())
  jax.block_until_ready(out.image)
  jax.effects_barrier()
  assert sorted(seen) == [(0, 3), (1, 3), (2, 3)]
