"""Progress reporting: phases, rate and time left from restore time only, log lines off a tty."""

import io as std_io
import logging
import threading

import numpy as np
import pytest

from upzeroir_jax import progress


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
  with p.phase(progress.COMPILING):
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
  assert f"upzeroir: {progress.COMPILING}: done in 300.0 s" in text
  assert "compiling (first run only; cached afterwards)" in text
  assert "3/5" in text and "14.0 s/img" in text and "0:28 left" in text


def test_one_log_line_per_image_when_not_a_terminal(caplog):
  out = std_io.StringIO()
  p = progress.Progress(3, stream=out)
  assert not p.interactive
  with caplog.at_level(logging.INFO):
    with p.phase(progress.COMPILING):
      pass
    p.images_done(["x.png", "y.png"], 20.0)
    p.images_done(["z.png"], 4.0)
  p.close()
  assert out.getvalue() == ""  # no bar, no terminal control characters
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0] == f"{progress.COMPILING} ..."
  assert lines[1].startswith(f"{progress.COMPILING}: done in ")
  assert lines[2:] == ["restored 1/3 x.png (10.0 s per image; 0:10 left)",
                       "restored 2/3 y.png (10.0 s per image; 0:10 left)",
                       "restored 3/3 z.png (4.0 s per image; 0:00 left)"]


def test_disabled_progress_says_nothing(caplog):
  out = Tty()
  p = progress.Progress(2, stream=out, enabled=False)
  with caplog.at_level(logging.INFO):
    with p.phase(progress.LOADING):
      pass
    p.images_done(["a"], 1.0)
    p.on_step(np.int32(0), np.int32(4))
  p.close()
  assert out.getvalue() == "" and not caplog.records
  assert p.done == 1  # still counted, for the caller


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
