"""Shared fixtures: the benchmark image folder, skipped cleanly where absent; a temporary user
cache folder; the tiny random models for command-line tests, or none at all."""

import pathlib

import pytest

from upzeroir_jax import loading

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


@pytest.fixture(scope="session", autouse=True)
def user_cache_in_tmp(tmp_path_factory):
  """Binaries called in-process put JAX's compilation cache under $XDG_CACHE_HOME: a temporary
  folder here, never the user's own cache."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    yield


@pytest.fixture(scope="module")
def tiny():
  """The tiny random SD and VGG16 as `loading.load_models` returns them, once per test file."""
  return loading.load_models("tiny", scorer="none")


@pytest.fixture
def use_tiny(tiny, monkeypatch):
  """Makes `loading.load_models` return `tiny`; returns the list of its calls (source, kwargs)."""
  calls = []

  def load(source, **kwargs):
    calls.append((source, kwargs))
    return tiny

  monkeypatch.setattr(loading, "load_models", load)
  return calls


@pytest.fixture
def no_models(monkeypatch):
  """Fails the test at once if a run gets as far as loading models."""
  def load(source, **kwargs):
    pytest.fail(f"models loaded ({source})")

  monkeypatch.setattr(loading, "load_models", load)
