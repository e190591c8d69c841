"""`--dataset_dir=tfds:NAME[:SPLIT]`: a tensorflow-datasets split written out as PNG folders
that eval.run then reads like any benchmark folder (docs/evaluation.md, "tfds")."""

import pathlib

from upzeroir_jax import io
from upzeroir_jax.errors import RunError

# Feature names taken for the ground truth; the degraded image is `image` or the other one.
_TFDS_GT_KEYS = ("gt", "high", "target", "clean", "clear", "hq")


def materialize(spec: str, output_dir: pathlib.Path, gt_dir: str | None,
                manual_dir: str | None = None) -> tuple[pathlib.Path, pathlib.Path | None]:
  """Writes a tfds split's images as PNGs (process 0; the others wait) and returns the folders."""
  import jax
  try:
    import tensorflow_datasets as tfds

    from eval import datasets  # registers the builders of the paper's sets
  except ImportError:
    raise RunError("tfds: datasets need the tfds extra: pip install -e '.[tfds]'"
                            ) from None
  name, _, split = spec.partition(":")
  inputs, truth = output_dir / "inputs", output_dir / "gt"
  if jax.process_index() == 0 and not (inputs / ".complete").exists():
    for i, example in enumerate(tfds.as_numpy(tfds.load(
        name, split=split or "test", shuffle_files=False,
        download_and_prepare_kwargs=datasets.prepare_kwargs(manual_dir)))):
      images = {k: v for k, v in example.items() if getattr(v, "ndim", 0) == 3}
      if not images:
        raise RunError(f"tfds:{spec} has no image feature")
      gt_key = next((k for k in images if k.lower() in _TFDS_GT_KEYS), None)
      in_key = "image" if "image" in images and gt_key != "image" else next(
          k for k in images if k != gt_key)
      io.write_image(inputs / f"{i:05d}.png", images[in_key])
      if gt_key is not None:
        io.write_image(truth / f"{i:05d}.png", images[gt_key])
    (inputs / ".complete").touch()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("tfds materialized")
  if gt_dir:
    return inputs, pathlib.Path(gt_dir)
  return inputs, truth if truth.is_dir() else None
