"""Process settings of the binaries: the compilation cache folder and XLA's log lines.

Each check runs in a fresh Python process, because both settings are process-wide JAX state.
"""

import ast
import io
import logging as std_logging
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
from absl import flags
from absl import logging as absl_logging

from upzeroir_jax import startup

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, check=False,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_default_cache_folder_follows_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert startup.default_cache_dir() == tmp_path / "upzeroir-jax" / "jax"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert startup.default_cache_dir() == tmp_path / "home" / ".cache" / "upzeroir-jax" / "jax"
  fv = startup.define_flags(flags.FlagValues())
  fv(["prog"])
  assert fv.compilation_cache == str(tmp_path / "home" / ".cache" / "upzeroir-jax" / "jax")


_COMPILE_TWICE = """
  import sys, jax, jax.numpy as jnp
  from upzeroir_jax import startup
  print("CACHE", startup.enable_compilation_cache(sys.argv[1] if len(sys.argv) > 1 else "{arg}"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.jit(lambda x: jnp.sin(x) * 3 + 1)(jnp.ones(5)).block_until_ready()
"""


def test_compiled_programs_land_in_the_cache_folder_and_empty_turns_it_off(tmp_path):
  cache = tmp_path / "c" / "jax"
  proc = _python(_COMPILE_TWICE.format(arg=cache))
  assert proc.returncode == 0, proc.stderr
  assert f"CACHE {cache}" in proc.stdout
  entries = sorted(p.name for p in cache.iterdir())
  assert any(name.startswith("jit__lambda") for name in entries), entries
  proc = _python(_COMPILE_TWICE.format(arg=""), env={"JAX_COMPILATION_CACHE_DIR": str(cache)})
  assert proc.returncode == 0 and "CACHE None" in proc.stdout
  assert sorted(p.name for p in cache.iterdir()) == entries  # off: nothing new written


def test_a_cache_folder_that_cannot_be_created_only_costs_the_cache(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = _python(_COMPILE_TWICE.format(arg=blocker / "jax"))
  assert proc.returncode == 0 and "CACHE None" in proc.stdout
  assert "compilation cache off: cannot create" in proc.stderr


_PROFILE = """
  import sys, tempfile, jax, jax.numpy as jnp
  from upzeroir_jax import startup
  startup.quiet_xla(verbose=sys.argv[1] == "1" if len(sys.argv) > 1 else {verbose})
  with jax.profiler.trace(tempfile.mkdtemp()):
    jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()
"""


def test_xla_log_lines_are_hidden_unless_verbose():
  # TF_CPP_MIN_LOG_LEVEL=0 lets XLA's C++ log every INFO line (the profiler writes some);
  # quiet_xla must raise the threshold past ERROR, where the "Very slow compile?" banner is.
  quiet = _python(_PROFILE.format(verbose=False), env={"TF_CPP_MIN_LOG_LEVEL": "0"})
  loud = _python(_PROFILE.format(verbose=True), env={"TF_CPP_MIN_LOG_LEVEL": "0"})
  assert quiet.returncode == 0 and loud.returncode == 0
  assert "save_profile.cc" in loud.stderr
  assert ".cc:" not in quiet.stderr, quiet.stderr


_WATCH = """
  import sys, logging, jax, jax.numpy as jnp
  from upzeroir_jax import compile_watch, startup
  startup.enable_compilation_cache(sys.argv[1] if len(sys.argv) > 1 else "{arg}")
  startup.quiet_xla(verbose=False)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  x = jax.ShapeDtypeStruct((32, 32), jnp.float32)
  f = jax.jit(lambda a: jnp.sin(a) @ a + 1)
  for attempt in ("first", "again"):
    seen = []
    with compile_watch.watch(seen.append) as w:
      jax.jit(lambda a: a * 2)(jnp.ones(3))  # run while tracing: not the program watched
      program = f.lower(x)
      w.lowered("jit__lambda")  # JAX's module name: jit_<function name>
      program.compile()
    print(attempt, seen, w.state, w.compile_called, w.saved)
"""


def test_jax_tells_compiling_from_loading_the_cache_as_it_happens(tmp_path):
  """A fresh process compiles (lookup, then the miss before XLA runs) and saves; the next one
  loads; a second compile in the same process reuses the program from memory, silently. JAX's
  own compiler log lines stay hidden throughout."""
  cache = tmp_path / "jax"
  first = _python(_WATCH.format(arg=cache))
  second = _python(_WATCH.format(arg=cache))
  assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
  assert first.stdout.splitlines() == ["first ['looking up', 'compiling'] compiling True True",
                                       "again [] preparing False False"]
  assert second.stdout.splitlines() == ["first ['looking up', 'loaded'] loaded True False",
                                        "again [] preparing False False"]
  assert "CACHE MISS" not in first.stderr and "cache hit" not in second.stderr


class _Tty(io.StringIO):
  def isatty(self):
    return True


def _record(level: int, message: str) -> std_logging.LogRecord:
  return std_logging.LogRecord("upzeroir_jax.auto", level, "auto.py", 80, message, (), None)


def test_terminal_log_lines_read_as_the_programs_own_unless_verbose(monkeypatch):
  """absl's "I1207 21:18:38.058576 1234 auto.py:80] ..." prefix is for log files; a terminal
  reads "upzeroir: ...". --verbose and a stderr that is not a terminal keep absl's format."""
  handler = absl_logging.get_absl_handler().python_handler
  info = _record(std_logging.INFO, "a.png: found lowlight+noise -> task mixed")
  absl_line = handler.format(info)
  assert re.match(r"I\d{4} [\d:.]+ +\d+ auto\.py:80\] a\.png: found", absl_line), absl_line
  monkeypatch.setattr(sys, "stderr", _Tty())
  with startup.terminal_logs("upzeroir", verbose=False):
    assert handler.format(info) == "upzeroir: a.png: found lowlight+noise -> task mixed"
    assert handler.format(_record(std_logging.WARNING, "x")) == "upzeroir: warning: x"
    assert handler.format(_record(std_logging.ERROR, "y")) == "upzeroir: error: y"
  assert handler.format(info) == absl_line  # restored
  with startup.terminal_logs("upzeroir", verbose=True):
    assert handler.format(info) == absl_line
  monkeypatch.setattr(sys, "stderr", io.StringIO())
  with startup.terminal_logs("upzeroir", verbose=False):
    assert handler.format(info) == absl_line


_RESTORE_THEN_PROMPT = """
  import sys
  import numpy as np
  from upzeroir_jax import cli, io, loading

  def libraries():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("diffusers", "transformers",
                                                                 "torch", "tensorflow"))

  io.write_image("{folder}/x.png", np.full((64, 64, 3), 0.2))
  code = cli.main(["upzeroir", "restore", "--input={folder}/x.png", "--output={folder}/out",
                   "--task=lowlight", "--model=tiny", "--steps=2", "--nostep_progress",
                   "--compilation_cache="])
  print("RESTORE", code, libraries())
  loading.load_models("tiny", scorer="none").text_context("a photo of a cat")
  print("PROMPT", libraries())
"""


@pytest.mark.slow
def test_restore_imports_no_diffusers_transformers_or_torch_and_a_prompt_only_the_tokenizer(
    tmp_path):
  """Without a prompt (the tiny model included), `upzeroir restore` and the `restore` it runs
  import none of diffusers, transformers, torch or TensorFlow (which the test extra installs);
  a prompt adds transformers' tokenizer modules only."""
  proc = _python(_RESTORE_THEN_PROMPT.format(folder=tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines()
               if line.startswith(("RESTORE", "PROMPT")))
  assert lines["RESTORE"] == "0 []", lines
  modules = ast.literal_eval(lines["PROMPT"])
  assert modules and all(m.split(".")[0] == "transformers" for m in modules), modules
  models = {m for m in modules if m.startswith("transformers.models.")}
  assert models == {"transformers.models.clip", "transformers.models.clip.tokenization_clip"}
  assert not [m for m in modules if "modeling" in m], modules
