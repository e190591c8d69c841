"""The paper's sets as tfds builders (eval/datasets.py) and eval.run's `tfds:` source, checked
with tfds's own builder test case on small fake folders that the tests write."""

import pathlib
import shutil
import tempfile
from typing import ClassVar

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from eval import datasets, run
from upzeroir_jax import io


def _fake_set(folder: pathlib.Path, degraded: str, clean: str, names: tuple[str, ...],
              seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Writes 8-bit degraded / clean PNG pairs of random content (24×32) under `folder`; returns
  them by file name as uint8 arrays."""
  rng = np.random.default_rng(seed)
  out = {}
  for name in names:
    clean_img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    low = (clean_img // 3).astype(np.uint8)
    io.write_image(folder / degraded / name, low)
    io.write_image(folder / clean / name, clean_img)
    out[name] = (low, clean_img)
  return out


class Lolv1BuilderTest(tfds.testing.DatasetBuilderTestCase):
  """tfds's checks of a builder (registration, info, preparing and reading every split) on a
  fake LOLv1 folder (low/ + high/) in a temporary manual folder."""

  DATASET_CLASS = datasets.Lolv1
  SPLITS: ClassVar[dict[str, int]] = {"test": 3}
  SKIP_CHECKSUMS = True

  @classmethod
  def setUpClass(cls):
    root = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, root)
    _fake_set(pathlib.Path(root) / "lolv1", "low", "high", ("1.png", "22.png", "111.png"))
    cls.EXAMPLE_DIR = root
    super().setUpClass()


def test_every_paper_set_is_registered():
  registered = set(tfds.list_builders())
  assert {"lolv1", "lolv2", "hsts", "kodak24", "lol_noise", "lol_haze_noise"} <= registered
  assert [b.name for b in datasets.BUILDERS] == ["lolv1", "lolv2", "hsts", "kodak24",
                                                 "lol_noise", "lol_haze_noise"]


def test_tfds_source_of_eval_run_writes_the_prepared_pairs(tmp_path, monkeypatch):
  """`--dataset_dir=tfds:hsts` with `--tfds_manual_dir`: the builder prepares the fake HSTS
  folder (hazy/ + gt/, RESIDE-style hazy names `<id>_<A>_<beta>`), and eval.run writes its
  inputs and ground truth, pixel for pixel, as matching pairs."""
  monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "tfds"))
  manual = tmp_path / "manual"
  names = ("0001_0.8_0.2.png", "0002_0.9_0.1.png")
  made = _fake_set(manual / "hsts", "hazy", "gt", names, seed=1)
  for name in names:  # ground truth by id: gt/0001.png
    (manual / "hsts" / "gt" / name).rename(manual / "hsts" / "gt" / f"{name.split('_')[0]}.png")
  inputs, truth = run.resolve_dataset("tfds:hsts", None, tmp_path / "run", str(manual))
  got_in = sorted(inputs.glob("*.png"))
  assert len(got_in) == 2 and truth is not None
  for k, name in enumerate(sorted(names)):
    low, clean_img = made[name]
    x = np.round(io.read_image(got_in[k]) * 255).astype(np.uint8)
    y = np.round(io.read_image(truth / got_in[k].name) * 255).astype(np.uint8)
    np.testing.assert_array_equal(x, low)
    np.testing.assert_array_equal(y, clean_img)


def test_a_folder_without_a_layout_or_a_partner_is_named(tmp_path):
  (tmp_path / "flat").mkdir()
  with pytest.raises(ValueError, match="no degraded and clean sub-folders"):
    datasets.pairs(tmp_path / "flat")
  _fake_set(tmp_path / "set", "low", "high", ("a.png",))
  (tmp_path / "set" / "high" / "a.png").rename(tmp_path / "set" / "high" / "b.png")
  with pytest.raises(ValueError, match="no clean image"):
    datasets.pairs(tmp_path / "set")
