"""Process settings of the binaries: the compilation cache folder and XLA's log lines.

Each check runs in a fresh Python process, because both settings are process-wide JAX state.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

from absl import flags

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
