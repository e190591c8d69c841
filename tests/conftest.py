"""Shared fixtures: the benchmark image folder, skipped cleanly where absent."""

import pathlib

import pytest

DATASETS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets_dir() -> pathlib.Path:
  """Path of ../shared/datasets; skips the test where it is absent."""
  if not DATASETS.is_dir():
    pytest.skip(f"benchmark images not found at {DATASETS}")
  return DATASETS


@pytest.fixture(scope="session")
def kodak_dir(datasets_dir) -> pathlib.Path:
  path = datasets_dir / "kodak24"
  if not path.is_dir():
    pytest.skip(f"Kodak24 not found at {path}")
  return path
