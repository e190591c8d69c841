"""Evaluation protocols of eval.run / eval.score (docs/evaluation.md, "Protocols").

- `native` (default): every image is restored and scored at its own size.
- `ldrps`: the protocol behind the numbers the paper compares with, as LD-RPS's scripts run
  it: the input is LANCZOS-resized to 512 × 512 (the model grid), the output is saved
  LANCZOS-resized to 256 × 256, and scored against 256 × 256 references (LD-RPS released its
  test sets at that size; a reference of another size is LANCZOS-resized to it). As in those
  scripts, resizing works on 8-bit RGB images (PIL, `Image.LANCZOS`).
"""

import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from upzeroir_jax import io, records

NATIVE = "native"
LDRPS = "ldrps"
PROTOCOLS = (NATIVE, LDRPS)
LDRPS_MODEL_SIZE = 512
LDRPS_OUTPUT_SIZE = 256
LDRPS_INPUTS = "ldrps_inputs"  # run sub-folder of the inputs resized to the model grid


def lanczos(img: np.ndarray, size: int) -> np.ndarray:
  """`img` `[H, W, 3]` in [0, 1] resized to `[size, size, 3]` as LD-RPS does: rounded to 8 bits,
  PIL's LANCZOS filter, back to float32 in [0, 1]. An image already of that size is returned
  unchanged."""
  if img.shape[:2] == (size, size):
    return img
  u8 = Image.fromarray(np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")
  return np.asarray(u8.resize((size, size), Image.LANCZOS), np.float32) / 255.0


def model_inputs(files: Sequence[pathlib.Path], names: Sequence[str],
                 folder: pathlib.Path) -> list[pathlib.Path]:
  """Writes each input LANCZOS-resized to 512² as `folder/<name>` (8-bit PNG; existing files
  are kept) and returns the new paths, in order. `names` are the run's output names (PNG)."""
  out = []
  for src, name in zip(files, names):
    dst = folder / name
    if not dst.is_file():
      io.write_image(dst, lanczos(io.read_image(src), LDRPS_MODEL_SIZE))
    out.append(dst)
  return out


def finish_outputs(paths: Sequence[pathlib.Path]) -> int:
  """Resizes each existing restored image to 256² in place (LANCZOS, 8 bits); idempotent, so an
  interrupted run finishes on its next start. A sidecar that named the image before names the
  resized one after (`records.note_output`), so the pair stays finished. Returns how many files
  were resized."""
  done = 0
  for path in paths:
    if path.is_file() and io.image_size(path) != (LDRPS_OUTPUT_SIZE, LDRPS_OUTPUT_SIZE):
      paired = records.finished(path)
      io.write_image(path, lanczos(io.read_image(path), LDRPS_OUTPUT_SIZE))
      if paired:
        records.note_output(path)
      done += 1
  return done


def reference(img: np.ndarray, protocol: str) -> np.ndarray:
  """An image to score under `protocol`: unchanged (native) or at 256² (ldrps)."""
  return lanczos(img, LDRPS_OUTPUT_SIZE) if protocol == LDRPS else img
