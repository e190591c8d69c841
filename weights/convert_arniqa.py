r"""Converts the official ARNIQA weights to our checkpoints.

  python -m weights.convert_arniqa --encoder=ARNIQA.pth --regressor=regressor_kadid10k.pth \
      --output_dir=checkpoints/arniqa

writes `arniqa_encoder.safetensors` and `arniqa_regressor_<dataset>.safetensors` (the names
`upzeroir_jax.models.arniqa.checkpoint_files` reads). The inputs are the release assets of
github.com/miccunifi/ARNIQA
(https://github.com/miccunifi/ARNIQA/releases/download/weights/ARNIQA.pth and
`.../regressor_<dataset>.pth`, dataset one of live, csiq, tid2013, kadid10k, flive, spaq, clive,
koniq10k). `ARNIQA.pth` is a state dict of the encoder: torchvision's resnet50 children without
`fc` wrapped in `model.<index>` (plus an unused `projector`); plain torchvision `resnet50` keys
are accepted too. `regressor_<dataset>.pth` is a TorchScript module with tensors `weights`
`[1, 4096]` and `biases` (`torch.jit.script` of an sk2torch ridge model); only its tensors are
read (`_torchscript.read_tensors`: no TorchScript code runs, unlike `torch.jit.load`). Either
input may be given alone.
"""

import os
import re
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from absl import flags, logging

from upzeroir_jax import cli
from upzeroir_jax.models import arniqa, flat_checkpoint, resnet, weights_check
from weights import _torch_utils, _torchscript

PROG = "weights.convert_arniqa"
USAGE = __doc__

# torchvision resnet50 children order, as indexed by ARNIQA's `nn.Sequential` wrapper.
_SEQUENTIAL_NAMES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                     "7": "layer4"}


def _torchvision_keys(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """ARNIQA's `model.<i>.` keys -> torchvision resnet50 keys; the projector is dropped."""
  out = {}
  for key, value in state.items():
    match = re.fullmatch(r"model\.(\d+)\.(.*)", key)
    if match:
      key = f"{_SEQUENTIAL_NAMES[match.group(1)]}.{match.group(2)}"
    if not key.startswith(("projector.", "fc.")) and not key.endswith("num_batches_tracked"):
      out[key] = value
  return out


def _batch_norm(state: Mapping[str, np.ndarray], prefix: str) -> tuple[dict, dict]:
  params = {"scale": state[f"{prefix}.weight"], "bias": state[f"{prefix}.bias"]}
  stats = {"mean": state[f"{prefix}.running_mean"], "var": state[f"{prefix}.running_var"]}
  return params, stats


def convert_resnet50(state: Mapping[str, np.ndarray]) -> dict:
  """torchvision `resnet50` (or ARNIQA `model.<i>`) state dict -> `ResNet50` variables."""
  state = _torchvision_keys(state)
  params, stats = {}, {}
  params["conv1"] = _torch_utils.conv(state, "conv1", bias=False)
  params["bn1"], stats["bn1"] = _batch_norm(state, "bn1")
  for stage, (_, blocks, _) in enumerate(resnet.STAGES, 1):
    for i in range(blocks):
      src, name = f"layer{stage}.{i}", f"layer{stage}_{i}"
      block_params, block_stats = {}, {}
      for j in (1, 2, 3):
        block_params[f"conv{j}"] = _torch_utils.conv(state, f"{src}.conv{j}", bias=False)
        block_params[f"bn{j}"], block_stats[f"bn{j}"] = _batch_norm(state, f"{src}.bn{j}")
      if i == 0:
        block_params["downsample_conv"] = _torch_utils.conv(state, f"{src}.downsample.0",
                                                            bias=False)
        block_params["downsample_bn"], block_stats["downsample_bn"] = _batch_norm(
            state, f"{src}.downsample.1")
      params[name], stats[name] = block_params, block_stats
  return {"params": params, "batch_stats": stats}


def read_regressor(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The TorchScript ridge regressor's tensors -> `{"weight": [4096], "bias": []}`.

  Nothing from the file is executed (see `weights/_torchscript.py`).
  """
  return regressor_from_state(_torchscript.read_tensors(path), os.fspath(path))


def regressor_from_state(state: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """Regressor tensors `weights [1, 4096]`, `biases [] or [1]` -> our `{"weight", "bias"}`."""
  if "weights" not in state or "biases" not in state:
    raise ValueError(f"{source!r} has tensors {sorted(state)}, expected 'weights' and 'biases'")
  for key in ("weights", "biases"):
    weights_check.check_tensor(source, key, state[key], np.shape(state[key]),
                               "pass an official ARNIQA regressor file")
  weight = np.reshape(state["weights"], -1)
  if weight.shape != (2 * arniqa.FEATURE_DIM,):
    raise ValueError(f"{source!r}: regressor weights have {weight.size} values, "
                     f"expected {2 * arniqa.FEATURE_DIM}")
  return {"weight": weight, "bias": np.reshape(state["biases"], ())}


def _dataset_from_name(path: str) -> str:
  match = re.fullmatch(r"regressor_(\w+)\.pth", os.path.basename(path))
  if not match or match.group(1) not in arniqa.DATASETS:
    raise ValueError(f"cannot tell the dataset of {path!r} from its name; pass --dataset")
  return match.group(1)


def encoder_path(output_dir: str | os.PathLike) -> str:
  """Where `convert` writes the encoder checkpoint."""
  return os.path.join(os.fspath(output_dir), arniqa.ENCODER_FILE)


def regressor_path(output_dir: str | os.PathLike, dataset: str) -> str:
  """Where `convert` writes the regressor checkpoint of `dataset`."""
  return os.path.join(os.fspath(output_dir), arniqa.regressor_file(dataset))


def convert(output_dir: str | os.PathLike, encoder: str | None = None,
            regressor: str | None = None, dataset: str | None = None) -> None:
  """Converts the given official files into `output_dir` (see the module docstring)."""
  if regressor:
    dataset = dataset or _dataset_from_name(regressor)
  # Both inputs are read before anything is written: a bad file leaves no output behind.
  variables = convert_resnet50(_torch_utils.read_state_dict(encoder)) if encoder else None
  head = read_regressor(regressor) if regressor else None
  os.makedirs(output_dir, exist_ok=True)
  if encoder:
    flat_checkpoint.save(encoder_path(output_dir), variables,
                         {"model": "arniqa_encoder", "source": os.path.basename(encoder)})
    logging.info("wrote the ARNIQA encoder to %s", encoder_path(output_dir))
  if regressor:
    flat_checkpoint.save(regressor_path(output_dir, dataset), head,
                         {"model": "arniqa_regressor", "dataset": dataset,
                          "source": os.path.basename(regressor)})
    logging.info("wrote the %s regressor to %s", dataset, regressor_path(output_dir, dataset))


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of weights.convert_arniqa on `fv`."""
  flags.DEFINE_string("encoder", None, "ARNIQA.pth (encoder state dict).", flag_values=fv)
  flags.DEFINE_string("regressor", None, "regressor_<dataset>.pth (TorchScript).",
                      flag_values=fv)
  flags.DEFINE_enum("dataset", None, list(arniqa.DATASETS),
                    "Regressor dataset; default: parsed from the regressor file name.",
                    flag_values=fv)
  flags.DEFINE_string("output_dir", ".", "Folder for the converted checkpoints.",
                      flag_values=fv)
  return fv


def _main(fv: flags.FlagValues) -> int:
  if not (fv.encoder or fv.regressor):
    raise ValueError("pass --encoder=ARNIQA.pth and/or --regressor=regressor_<dataset>.pth")
  _torch_utils.require_files(encoder=fv.encoder, regressor=fv.regressor)
  convert(fv.output_dir, fv.encoder, fv.regressor, fv.dataset)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs weights.convert_arniqa with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
