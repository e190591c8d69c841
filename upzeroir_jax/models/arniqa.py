"""ARNIQA no-reference image quality (Agnolucci et al., WACV 2024), the DQR scorer of
docs/method.md §7.

As published in github.com/miccunifi/ARNIQA (`hubconf.py`, README inference example):
1. the half-scale image is a bilinear, antialiased resize to `(H // 2, W // 2)` (torchvision's
   `transforms.Resize((H // 2, W // 2))`, i.e. PIL bilinear resampling);
2. both scales are ImageNet-normalised and encoded by the ResNet-50 (torchvision layout) into
   its global-average-pooled 2048-d features, each L2-normalised (`F.normalize`, eps 1e-12);
3. the ridge regressor of the chosen dataset maps the concatenation `[f_full, f_half]` (4096)
   to a score in that dataset's opinion-score range;
4. the score is rescaled to [0, 1] with that range, and inverted for DMOS datasets, so higher
   is better.

The score of the whole image is returned, as in the README and `hubconf.py`; the paper's table
numbers average five 224x224 crops (centre and corners), which callers may do themselves. The
regressors were fitted on half-scale images that PIL resized from uint8 files; here the resize
runs on float32 images without re-quantisation.

Images: `[B, H, W, 3]` float32 in [0, 1], H and W >= 2 (ARNIQA was trained on 224x224 crops;
small images give valid but less meaningful scores).
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from upzeroir_jax.models import flat_checkpoint, places, random_init, resnet, vgg

# Opinion-score range and type of the regressor datasets, from miccunifi/ARNIQA `hubconf.py`
# (`available_datasets_ranges`, `available_datasets_mos_types`).
DATASETS = {
  "live": (1.0, 100.0, "dmos"),
  "csiq": (0.0, 1.0, "dmos"),
  "tid2013": (0.0, 9.0, "mos"),
  "kadid10k": (1.0, 5.0, "mos"),
  "flive": (1.0, 100.0, "mos"),
  "spaq": (1.0, 100.0, "mos"),
  "clive": (1.0, 100.0, "mos"),
  "koniq10k": (1.0, 100.0, "mos"),
}
FEATURE_DIM = 2048
ENCODER_FILE = "arniqa_encoder.safetensors"


def regressor_file(dataset: str = "kadid10k") -> str:
  """The file name weights/convert_arniqa.py gives the regressor of `dataset`."""
  return f"arniqa_regressor_{dataset}.safetensors"


def checkpoint_files(folder: str | os.PathLike,
                     dataset: str = "kadid10k") -> tuple[pathlib.Path, pathlib.Path]:
  """(encoder, regressor) files in a folder of converted ARNIQA checkpoints."""
  return pathlib.Path(folder) / ENCODER_FILE, pathlib.Path(folder) / regressor_file(dataset)


def converter(output_dir: str = "<dir>") -> str:
  """The command that writes the ARNIQA encoder and KADID-10k regressor into `output_dir`."""
  return ("python -m weights.convert_arniqa --encoder=ARNIQA.pth "
          f"--regressor=regressor_kadid10k.pth --output_dir={output_dir}")


@struct.dataclass
class ARNIQAModel:
  """ARNIQA encoder variables, ridge regressor and the score bounds of its dataset.

  Attributes:
    encoder: ResNet-50 variables `{"params", "batch_stats"}`.
    weight: `[4096]` ridge coefficients over `[f_full, f_half]`.
    bias: `[]` ridge intercept.
    bounds: `[2]` the regressor outputs that map to 0 and to 1: `(lo, hi)` of a MOS dataset,
      `(hi, lo)` of a DMOS dataset (lower is better there). Leaves rather than a static dataset
      name, so models with different regressors share one compiled scorer.
  """

  encoder: dict
  weight: jax.Array
  bias: jax.Array
  bounds: jax.Array


def bounds(dataset: str) -> jax.Array:
  """`[2]` raw scores of `dataset` that map to quality 0 and 1 (see `ARNIQAModel.bounds`)."""
  if dataset not in DATASETS:
    raise ValueError(
      f"unknown ARNIQA regressor dataset {dataset!r}; choose one of {', '.join(DATASETS)}"
    )
  lo, hi, kind = DATASETS[dataset]
  return jnp.asarray((hi, lo) if kind == "dmos" else (lo, hi), jnp.float32)


def init_random(key: jax.Array, dataset: str = "kadid10k") -> ARNIQAModel:
  """An ARNIQA model with random encoder and regressor weights (for tests)."""
  score_bounds = bounds(dataset)
  enc_key, reg_key = jax.random.split(key)
  weight = random_init.numpy_rng(reg_key).standard_normal(2 * FEATURE_DIM, np.float32)
  weight = jnp.asarray(weight / np.sqrt(2 * FEATURE_DIM))
  return ARNIQAModel(resnet.init_random(enc_key), weight, jnp.zeros(()), score_bounds)


def abstract_encoder() -> dict:
  """Shapes of the ResNet-50 encoder variables (`jax.ShapeDtypeStruct` leaves)."""
  example = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(resnet.ResNet50().init, jax.random.key(0), example)


def abstract_regressor() -> dict:
  """Shapes of the ridge regressor as stored: `weight [4096]`, `bias [1]`."""
  return {"weight": jax.ShapeDtypeStruct((2 * FEATURE_DIM,), jnp.float32),
          "bias": jax.ShapeDtypeStruct((1,), jnp.float32)}


def load(
  encoder_ckpt: str | os.PathLike, regressor_ckpt: str | os.PathLike, dataset: str = "kadid10k"
) -> ARNIQAModel:
  """Reads the checkpoints written by `weights/convert_arniqa.py`.

  Args:
    encoder_ckpt: the converted `ARNIQA.pth` encoder.
    regressor_ckpt: the converted `regressor_<dataset>.pth`.
    dataset: the regressor's dataset; must match the one recorded in `regressor_ckpt`.

  Raises:
    flat_checkpoint.MissingCheckpointError: a file is absent (the message names the path and
      the commands that create it).
    flat_checkpoint.CheckpointError: a file is unreadable, of the wrong kind, or a tensor is
      missing, unexpected, misshaped, not float or not finite (one line naming file and key).
    ValueError: unknown dataset, or a regressor of another dataset.
  """
  score_bounds = bounds(dataset)
  encoder, _ = flat_checkpoint.load(
      encoder_ckpt, converter(os.path.dirname(os.fspath(encoder_ckpt)) or "."), "arniqa_encoder",
      "ARNIQA encoder", lambda _: abstract_encoder(), f"{places.ARNIQA_DIR}/{ENCODER_FILE}")
  regressor, reg_meta = flat_checkpoint.load(
      regressor_ckpt, converter(os.path.dirname(os.fspath(regressor_ckpt)) or "."),
      "arniqa_regressor", "ARNIQA regressor", lambda _: abstract_regressor(),
      f"{places.ARNIQA_DIR}/{regressor_file(dataset)}")
  if reg_meta.get("dataset") != dataset:
    raise ValueError(
      f"{os.fspath(regressor_ckpt)!r} holds the {reg_meta.get('dataset')!r} "
      f"regressor; pass dataset={reg_meta.get('dataset')!r} or another file"
    )
  return ARNIQAModel(
    jax.tree.map(jnp.asarray, encoder),
    jnp.asarray(regressor["weight"]),
    jnp.asarray(regressor["bias"]).reshape(()),
    score_bounds,
  )


def _l2_normalize(f: jax.Array) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True))
  return f / jnp.maximum(norm, 1e-12)


def features(model: ARNIQAModel, img: jax.Array) -> jax.Array:
  """`[f_full, f_half]`: L2-normalised ResNet-50 features at both scales, `[B, 4096]`.

  Args:
    model: an `ARNIQAModel`.
    img: `[B, H, W, 3]` float in [0, 1], H and W >= 2.
  """
  if img.ndim != 4 or img.shape[-1] != 3:
    raise ValueError(f"expected images [B, H, W, 3], got shape {tuple(img.shape)}")
  b, h, w, _ = img.shape
  if h < 2 or w < 2:
    raise ValueError(f"ARNIQA needs images of at least 2x2 pixels, got {h}x{w}")
  img = img.astype(jnp.float32)
  half = jax.image.resize(img, (b, h // 2, w // 2, 3), method="linear", antialias=True)
  encoder = resnet.ResNet50()
  f_full, _ = encoder.apply(model.encoder, vgg.imagenet_normalize(img))
  f_half, _ = encoder.apply(model.encoder, vgg.imagenet_normalize(half))
  return jnp.concatenate([_l2_normalize(f_full), _l2_normalize(f_half)], axis=-1)


def raw_score(model: ARNIQAModel, img: jax.Array) -> jax.Array:
  """The ridge regressor's prediction in the dataset's own opinion-score range, `[B]`."""
  return features(model, img) @ model.weight + model.bias


def score(model: ARNIQAModel, img: jax.Array) -> jax.Array:
  """ARNIQA quality of each image, `[B]`, scaled to [0, 1], higher is better (docs/method.md §7).

  `(s - lo) / (hi - lo)` with the regressor dataset's range, `1 - that` for DMOS datasets
  (LIVE, CSIQ), i.e. `(s - bounds[0]) / (bounds[1] - bounds[0])`. Predictions outside the range
  are not clipped, as in the original.

  Args:
    model: an `ARNIQAModel`.
    img: `[B, H, W, 3]` float in [0, 1], H and W >= 2.
  """
  worst, best = model.bounds[0], model.bounds[1]
  return (raw_score(model, img) - worst) / (best - worst)
