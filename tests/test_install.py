"""The installed project: the evaluation binaries and the weights converters are packages of it,
so `python -m eval.*` and `python -m weights.*` run from any folder, not only from a checkout's
root."""

import os
import pathlib
import subprocess
import sys

import pytest
import setuptools

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_package_list_holds_every_package_of_the_checkout():
  """What `pip install` packs (pyproject's `packages.find`) is every folder with an __init__.py
  under upzeroir_jax/, eval/ and weights/."""
  tomllib = pytest.importorskip("tomllib")  # Python 3.11+
  found = (tomllib.loads((ROOT / "pyproject.toml").read_text())
           ["tool"]["setuptools"]["packages"]["find"])
  packed = set(setuptools.find_packages(str(ROOT), include=found["include"]))
  on_disk = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("upzeroir_jax", "eval", "weights")
             for p in (ROOT / top).rglob("__init__.py")}
  assert {"eval", "eval.bench", "weights", "upzeroir_jax"} <= on_disk
  assert packed == on_disk


def test_binaries_run_from_a_folder_outside_the_checkout(tmp_path):
  """The installed interpreter, started in an empty temporary folder with no PYTHONPATH (the
  two run side by side)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  expected = {"eval.identify": "usage: python -m eval.identify ",
              "weights.convert_vgg": "Converts torchvision's VGG16 state dict"}
  procs = {module: subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=tmp_path,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
           for module in expected}
  for module, proc in procs.items():
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.startswith(expected[module]), out[:200]
  assert not str(tmp_path).startswith(str(ROOT))
