"""What a new user meets first: --version, --help on the smoke test, --model=tiny defaults."""

import subprocess
import sys

from absl import flags

import upzeroir_jax
from upzeroir_jax import cli, config, smoke


def _parsed(*args):
  fv = cli.define_flags(flags.FlagValues())
  fv(["upzeroir", "--input=x", "--output=y", "--task=lowlight", *args])
  return fv


def test_tiny_gets_its_small_defaults_and_explicit_flags_win():
  fv = _parsed("--model=tiny")
  assert smoke.apply_defaults(fv) == {"size": 64, "steps": 10, "scorer": "none",
                                      "override": ["pcdm_features=16,16,16",
                                                   "disc_features=16,16,16"]}
  assert (fv.size, fv.steps, fv.scorer) == (64, 10, "none")
  cfg = cli.flags_lib.config_from_flags(fv, "lowlight")
  assert cfg.steps == 10 and cfg.pcdm_features == (16, 16, 16) and cfg.dqr is False
  assert cfg.disc_features == (16, 16, 16)

  fv = _parsed("--model=tiny", "--size=128", "--steps=3", "--scorer=niqe",
               "--override=pcdm_features=8,8,8")
  smoke.apply_defaults(fv)
  assert (fv.size, fv.steps, fv.scorer) == (128, 3, "niqe")
  cfg = cli.flags_lib.config_from_flags(fv, "lowlight")
  assert cfg.pcdm_features == (8, 8, 8) and cfg.disc_features == (16, 16, 16) and cfg.dqr


def test_other_models_keep_the_paper_defaults():
  fv = _parsed()
  assert smoke.apply_defaults(fv) == {}
  assert (fv.size, fv.steps, fv.scorer, fv.override) == (512, None, "arniqa", [])
  assert cli.flags_lib.config_from_flags(fv, "lowlight") == config.preset("lowlight", dqr=True)


def test_help_says_tiny_is_a_one_minute_smoke_test_with_its_defaults(capsys):
  assert cli.main(["upzeroir", "--help"]) == 0
  raw = capsys.readouterr().out
  out = " ".join(raw.split())
  assert "--model=tiny is a smoke test on random weights" in out
  assert f"needs {smoke.COST} on a 2-core CPU" in out
  assert ("--size=64 --steps=10 --scorer=none --override=pcdm_features=16,16,16 "
          "--override=disc_features=16,16,16") in out
  # The default cache path may be wrapped anywhere (also at its hyphen) in the help text.
  assert "--compilation_cache" in out and "upzeroir-jax/jax" in "".join(raw.split())


def test_version():
  proc = subprocess.run([sys.executable, "-m", "upzeroir_jax.cli", "--version"], check=False,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stderr == ""
  assert proc.stdout.startswith(f"upzeroir (upzeroir-jax) {upzeroir_jax.__version__}, jax ")
