"""Ctrl-C: stops within seconds also inside a long compiled call, exit 130, nothing partial."""

import _thread
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from upzeroir_jax import interrupt, io, jobs, pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_call_returns_the_result_and_raises_the_error_of_the_worker():
  assert interrupt.call(lambda a, b=1: a + b, 2, b=5) == 7
  with pytest.raises(ZeroDivisionError):
    interrupt.call(lambda: 1 / 0)
  assert not interrupt.busy()


@pytest.fixture(autouse=True)
def ctrl_c_handled():
  """Python's Ctrl-C handler in this process for each test, whatever the suite inherited (a
  shell starts background jobs with SIGINT ignored, and Python then installs no handler); the
  children started here then begin with SIGINT delivered too (a handled signal is reset on
  exec, an ignored one is inherited)."""
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, before)


def test_after_ctrl_c_the_abandoned_worker_counts_as_busy():
  release = threading.Event()
  threading.Timer(0.3, _thread.interrupt_main).start()
  with pytest.raises(KeyboardInterrupt):
    interrupt.call(release.wait, 30)
  assert interrupt.busy()  # so that the binaries exit at once instead of waiting for it
  release.set()
  deadline = time.monotonic() + 10
  while interrupt.busy() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not interrupt.busy()


def _start(code: str, *args: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _wait_for(proc: subprocess.Popen, needle: str, stream: str, timeout: float) -> list[str]:
  """Lines of `stream` until one contains `needle`."""
  lines, end = [], time.monotonic() + timeout
  source = proc.stdout if stream == "stdout" else proc.stderr
  while time.monotonic() < end:
    line = source.readline()
    if not line:
      break
    lines.append(line)
    if needle in line:
      return lines
  proc.kill()
  raise AssertionError(f"{needle!r} never appeared: {''.join(lines)}")


def _interrupt(proc: subprocess.Popen, timeout: float) -> float:
  """Sends Ctrl-C (SIGINT) to `proc`, waits at most `timeout` s for it to exit (then kills it);
  returns the seconds it took."""
  sent = time.monotonic()
  proc.send_signal(signal.SIGINT)
  try:
    proc.wait(timeout=timeout)
  finally:
    proc.kill()
  return time.monotonic() - sent


# A compiled loop of minutes: Python cannot interrupt it while it runs.
_LONG_COMPILED_CALL = """
  import sys
  import jax, jax.numpy as jnp
  from absl import flags
  from upzeroir_jax import cli, interrupt

  def spin(x):
    return jax.lax.while_loop(lambda c: c[0] < 4e9, lambda c: (c[0] + 1.0, jnp.sin(c[1])),
                              (0.0, x))[1]

  def body(fv):
    f = jax.jit(spin).lower(1.0).compile()
    print("started", flush=True)
    interrupt.call(lambda: jax.block_until_ready(f(1.0)))
    return 0

  sys.exit(cli.run_main("prog", "usage", flags.FlagValues(), None, body))
"""


def test_ctrl_c_stops_a_long_compiled_call_within_seconds():
  proc = _start(_LONG_COMPILED_CALL, "--verbose=false")
  _wait_for(proc, "started", "stdout", 120)
  time.sleep(0.5)
  took = _interrupt(proc, 20)
  assert proc.returncode == 130
  assert took < 3.0, f"exit took {took:.1f} s after Ctrl-C"
  assert proc.stderr.read().strip().endswith("prog: interrupted; run the same command again "
                                             "to resume")


def test_an_interrupted_sidecar_write_leaves_no_temporary_file(tmp_path, monkeypatch):
  def interrupted(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr(os, "replace", interrupted)
  with pytest.raises(KeyboardInterrupt):
    io.write_json(tmp_path / "a.json", {"x": 1})
  assert list(tmp_path.iterdir()) == []


def test_the_lock_file_is_removed_when_the_run_ends_also_by_ctrl_c(tmp_path):
  with jobs.output_lock(tmp_path):
    assert (tmp_path / jobs.LOCK_NAME).is_file()
    with pytest.raises(pipeline.RunError, match="another run is writing"), \
        jobs.output_lock(tmp_path):
      pass
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(KeyboardInterrupt), jobs.output_lock(tmp_path):
    raise KeyboardInterrupt
  assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_of_the_cli_while_compiling_exits_130_and_leaves_no_file(tmp_path):
  src = tmp_path / "in.png"
  io.write_image(src, np.full((20, 30, 3), 0.4))
  out = tmp_path / "out"
  proc = subprocess.Popen(
      [sys.executable, "-m", "upzeroir_jax.cli", "restore", f"--input={src}", f"--output={out}/",
       "--task=lowlight", "--model=tiny", "--compilation_cache="],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "PYTHONPATH": str(ROOT)})
  _wait_for(proc, "compiling ...", "stderr", 300)  # the cache is off: said from the start
  time.sleep(1.0)
  took = _interrupt(proc, 60)
  assert proc.returncode == 130 and took < 5.0, (proc.returncode, took)
  assert "upzeroir: interrupted" in proc.stderr.read()
  assert [p.name for p in out.rglob("*")] == []
