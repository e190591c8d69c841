"""Weights files checked against the architecture before use, and never executed.

Every bad file (missing, unexpected, misshaped, transposed, non-float or non-finite tensors,
truncated files, files of another model) gives a one-line `CheckpointError` naming the file and
the first bad key; the CLI exits 2 on it and eval/score.py marks the metric missing. A crafted
ARNIQA regressor or `.bin` file cannot run code."""

import os
import pathlib
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import safetensors.numpy

from upzeroir_jax import cli, io
from upzeroir_jax.metrics import lpips
from upzeroir_jax.models import arniqa, flat_checkpoint, vgg

CheckpointError = flat_checkpoint.CheckpointError


def _flat(tree, prefix=""):
  out = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{name}/"))
    else:
      out[f"{prefix}{name}"] = value
  return out


def _random_flat(abstract, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in _flat(abstract).items()}


def _write(path, flat, metadata):
  safetensors.numpy.save_file(flat, str(path), metadata=metadata)
  return path


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return path


def _assert_one_line(err, path, *words):
  msg = str(err.value)
  assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
  for word in words:
    assert word in msg, msg


# ---- VGG16 --------------------------------------------------------------------------------------

def _without(flat, key):
  return {k: v for k, v in flat.items() if k != key}


def _with(flat, key, value):
  return {**flat, key: value}


def _one_nan(x):
  x = x.copy()
  x.flat[7] = np.nan
  return x


VGG_CASES = {
    "missing_bias": (lambda f: _without(f, "conv3_1/bias"), "'conv3_1/bias' is missing"),
    "one_dummy_tensor": (lambda f: {"conv1_1/kernel": f["conv1_1/kernel"]},
                         "'conv1_1/bias' is missing (25 of 26 missing)"),
    "junk_tensor": (lambda f: _with(f, "junk/kernel", np.zeros(3, np.float32)),
                    "unexpected tensor 'junk/kernel'"),
    "oihw_layout": (lambda f: _with(f, "conv1_2/kernel", f["conv1_2/kernel"].transpose(3, 2, 0, 1)),
                    "'conv1_2/kernel' has shape (64, 64, 3, 3), the architecture needs (3, 3, 64, 64)"),
    "int8_tensor": (lambda f: _with(f, "conv2_1/bias", np.ones(128, np.int8)),
                    "'conv2_1/bias' is int8, not a float type"),
    "nan_value": (lambda f: _with(f, "conv4_2/kernel", _one_nan(f["conv4_2/kernel"])),
                  "'conv4_2/kernel' has 1 NaN or infinite values"),
}


@pytest.fixture(scope="module")
def vgg_flat():
  return _random_flat(vgg.abstract_params())


def test_valid_vgg16_checkpoint_loads_unchanged(tmp_path, vgg_flat):
  path = _write(tmp_path / "v.safetensors", vgg_flat, {"model": "vgg16"})
  got = _flat(vgg.load(path))
  assert sorted(got) == sorted(vgg_flat)
  for key, value in vgg_flat.items():
    np.testing.assert_array_equal(got[key], value)


@pytest.mark.parametrize("case", sorted(VGG_CASES))
def test_bad_vgg16_tensors_are_named(tmp_path, vgg_flat, case):
  mutate, words = VGG_CASES[case]
  path = _write(tmp_path / "v.safetensors", mutate(dict(vgg_flat)), {"model": "vgg16"})
  with pytest.raises(CheckpointError) as err:
    vgg.load(path)
  _assert_one_line(err, path, words, "weights.convert_vgg")


def test_truncated_or_foreign_vgg16_files_are_refused(tmp_path, vgg_flat):
  path = _truncate(_write(tmp_path / "t.safetensors", vgg_flat, {"model": "vgg16"}))
  with pytest.raises(CheckpointError) as err:
    vgg.load(path)
  _assert_one_line(err, path, "not a complete safetensors file")
  path = _write(tmp_path / "l.safetensors", vgg_flat, {"model": "lpips"})
  with pytest.raises(CheckpointError) as err:
    vgg.load(path)
  _assert_one_line(err, path, "not a VGG16 checkpoint")


def test_cli_exits_2_with_one_line_naming_a_bad_weights_file(tmp_path, vgg_flat, capsys):
  io.write_image(tmp_path / "a.png", np.zeros((8, 8, 3)))
  bad = _truncate(_write(tmp_path / "vgg.safetensors", vgg_flat, {"model": "vgg16"}))
  code = cli.main(["upzeroir", "restore", f"--input={tmp_path / 'a.png'}",
                   f"--output={tmp_path / 'out'}", "--task=denoise", "--model=tiny", "--scorer=none",
                   f"--vgg={bad}"])
  err = capsys.readouterr().err.strip()
  assert code == 2, err
  assert err.count("\n") == 0 and f"{bad}: not a complete safetensors file" in err, err


# ---- LPIPS and ARNIQA ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lpips_flat():
  return _random_flat(lpips.abstract_params("vgg"))


@pytest.mark.parametrize("mutate,words", [
    (lambda f: _without(f, "lin/lin2"), "'lin/lin2' is missing"),
    (lambda f: _with(f, "lin/lin1", np.ones((1, 128, 1, 1), np.float32)),
     "'lin/lin1' has shape (1, 128, 1, 1)"),
    (lambda f: _with(f, "net/conv5_3/bias", np.full(512, np.inf, np.float32)),
     "'net/conv5_3/bias' has 512 NaN or infinite values"),
], ids=["missing", "torch_layout", "inf"])
def test_bad_lpips_tensors_are_named(tmp_path, lpips_flat, mutate, words):
  flat = mutate(dict(lpips_flat))
  path = _write(tmp_path / "l.safetensors", flat, {"model": "lpips", "net": "vgg"})
  with pytest.raises(CheckpointError) as err:
    lpips.load(path)
  _assert_one_line(err, path, words, "weights.convert_lpips")


@pytest.fixture(scope="module")
def arniqa_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("arniqa")
  enc = {k: np.zeros(v.shape, np.float32) for k, v in _flat(arniqa.abstract_encoder()).items()}
  reg = _random_flat(arniqa.abstract_regressor())
  _write(root / "encoder.safetensors", enc, {"model": "arniqa_encoder"})
  return root, enc, reg


@pytest.mark.parametrize("mutate,words", [
    (lambda f: _with(f, "bias", np.array([np.nan], np.float32)), "'bias' has 1 NaN"),
    (lambda f: _with(f, "weight", np.ones((1, 4096), np.float32)),
     "'weight' has shape (1, 4096), the architecture needs (4096,)"),
    (lambda f: _with(f, "weight", np.ones(4096, np.int32)), "'weight' is int32"),
    (lambda f: _with(f, "coef", np.ones(3, np.float32)), "unexpected tensor 'coef'"),
], ids=["nan", "shape", "int32", "extra"])
def test_bad_arniqa_regressor_tensors_are_named(tmp_path, arniqa_files, mutate, words):
  root, _, reg = arniqa_files
  path = _write(tmp_path / "r.safetensors", mutate(dict(reg)),
                {"model": "arniqa_regressor", "dataset": "kadid10k"})
  with pytest.raises(CheckpointError) as err:
    arniqa.load(root / "encoder.safetensors", path)
  _assert_one_line(err, path, words)


def test_bad_arniqa_encoder_tensor_is_named(tmp_path, arniqa_files):
  root, enc, reg = arniqa_files
  reg_path = _write(tmp_path / "r.safetensors", reg,
                    {"model": "arniqa_regressor", "dataset": "kadid10k"})
  assert float(arniqa.load(root / "encoder.safetensors", reg_path).bias) == float(reg["bias"][0])
  path = _write(tmp_path / "e.safetensors", _without(enc, "batch_stats/layer2_0/bn2/var"),
                {"model": "arniqa_encoder"})
  with pytest.raises(CheckpointError) as err:
    arniqa.load(path, reg_path)
  _assert_one_line(err, path, "'batch_stats/layer2_0/bn2/var' is missing (1 of ")


def test_score_marks_metrics_with_truncated_weights_missing(tmp_path, arniqa_files, lpips_flat):
  from eval import score

  root, _, reg = arniqa_files
  lp = _truncate(_write(tmp_path / "lpips.safetensors", lpips_flat,
                        {"model": "lpips", "net": "vgg"}))
  arniqa_dir = tmp_path / "arniqa"
  arniqa_dir.mkdir()
  shutil.copy(root / "encoder.safetensors", arniqa_dir / "arniqa_encoder.safetensors")
  reg_path = _write(arniqa_dir / "arniqa_regressor_kadid10k.safetensors", reg,
                    {"model": "arniqa_regressor", "dataset": "kadid10k"})
  _truncate(reg_path)
  fns, missing = score.metric_functions(str(lp), str(arniqa_dir))
  assert "lpips" not in fns and "arniqa" not in fns
  assert f"{lp}: not a complete safetensors file" in missing["lpips"]
  assert f"{reg_path}: not a complete safetensors file" in missing["arniqa"]


# ---- Stable Diffusion diffusers folders ---------------------------------------------------------

@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
  pytest.importorskip("torch")
  sd_reference = pytest.importorskip("tests.sd_reference")
  from upzeroir_jax.models import sd_configs

  root = tmp_path_factory.mktemp("sd") / "diffusers"
  sd_reference.save_folder(root, sd_configs.TINY, seed=3, safetensors=True)
  return root


def _unet_case(state, case):
  import torch

  names = sorted(state)
  if case == "missing_28":
    return {k: v for k, v in state.items() if k not in names[:28]}
  if case == "one_dummy":
    return {"dummy": torch.zeros(1)}
  if case == "shape":
    return {**state, "conv_in.weight": state["conv_in.weight"][:, :, :2].contiguous()}
  if case == "int8":
    return {**state, "conv_in.bias": state["conv_in.bias"].to(torch.int8)}
  if case == "nan":
    bad = state["conv_out.weight"].clone()
    bad[0, 0, 0, 0] = float("nan")
    return {**state, "conv_out.weight": bad}
  return {**state, "extra.weight": torch.zeros(3)}


SD_CASES = {
    "missing_28": "of 3",  # completed below with the real count
    "one_dummy": "unexpected tensor 'dummy'",
    "shape": "tensor 'conv_in.weight' has shape",
    "int8": "tensor 'conv_in.bias' is torch.int8, not a float type",
    "nan": "tensor 'conv_out.weight' has 1 NaN or infinite values",
    "extra": "unexpected tensor 'extra.weight'",
}


@pytest.mark.parametrize("case", sorted(SD_CASES))
def test_bad_unet_tensors_in_a_diffusers_folder_are_named(tmp_path, sd_folder, case):
  import safetensors.torch

  from upzeroir_jax.models import sd

  folder = tmp_path / "d"
  shutil.copytree(sd_folder, folder)
  unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
  state = safetensors.torch.load_file(str(unet))
  safetensors.torch.save_file(_unet_case(state, case), str(unet))
  with pytest.raises(sd.WeightsError) as err:
    sd.load(folder)
  assert isinstance(err.value, CheckpointError)
  words = SD_CASES[case]
  if case == "missing_28":
    words = f"(28 of {len(state)} missing)"
  _assert_one_line(err, unet, words)


def test_truncated_and_pickled_sd_weights_are_refused(tmp_path, sd_folder):
  import torch

  from upzeroir_jax.models import sd

  folder = tmp_path / "d"
  shutil.copytree(sd_folder, folder)
  vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
  _truncate(vae)
  with pytest.raises(sd.WeightsError) as err:
    sd.load(folder)
  _assert_one_line(err, vae, "not a readable weights file")
  # A .bin file whose pickle runs code when loaded without weights_only.
  marker = tmp_path / "ran.txt"
  vae.unlink()
  torch.save({"x": _Payload(str(marker))}, folder / "vae" / "diffusion_pytorch_model.bin")
  with pytest.raises(sd.WeightsError) as err:
    sd.load(folder)
  _assert_one_line(err, folder / "vae" / "diffusion_pytorch_model.bin", "not a readable")
  assert "weights_only" not in str(err.value)  # never the advice to load it unsafely
  assert not marker.exists()
  torch.load(folder / "vae" / "diffusion_pytorch_model.bin", weights_only=False)
  assert marker.exists()  # the payload is real: an unrestricted load runs it
  # Zero strides: one stored number claiming 37 GiB of values once copied.
  torch.save({"conv_in.weight": torch.ones(1).expand(100000, 100000)},
             folder / "vae" / "diffusion_pytorch_model.bin")
  with pytest.raises(sd.WeightsError) as err:
    sd.load(folder)
  _assert_one_line(err, folder / "vae" / "diffusion_pytorch_model.bin",
                   "'conv_in.weight' claims more values than its storage holds")


class _Payload:
  """Unpickling this object writes a file (through `exec`)."""

  def __init__(self, path: str) -> None:
    self.path = path

  def __reduce__(self):
    return exec, (f"open({self.path!r}, 'w').write('ran')",)


# ---- the ARNIQA regressor: TorchScript read without running it ----------------------------------

def _regressor_archive(path: pathlib.Path, data_pkl: bytes | None = None) -> None:
  """A TorchScript archive like the official regressor files, optionally with another data.pkl."""
  import torch

  class Regressor(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.register_buffer("weights", torch.arange(4096, dtype=torch.float32)[None] / 4096)
      self.register_buffer("biases", torch.tensor(0.5))

    def forward(self, x):
      return x @ self.weights.T + self.biases

  torch.jit.save(torch.jit.script(Regressor()), str(path))
  if data_pkl is not None:
    with zipfile.ZipFile(path) as z:
      entries = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    entries[name] = data_pkl
    with zipfile.ZipFile(path, "w") as z:
      for n, data in entries.items():
        z.writestr(n, data)


def test_official_layout_regressor_is_read_exactly(tmp_path):
  convert_arniqa = pytest.importorskip("weights.convert_arniqa")
  _regressor_archive(tmp_path / "regressor_kadid10k.pth")
  got = convert_arniqa.read_regressor(tmp_path / "regressor_kadid10k.pth")
  np.testing.assert_array_equal(got["weight"], np.arange(4096, dtype=np.float32) / 4096)
  assert float(got["bias"]) == 0.5


def test_regressor_with_a_code_running_pickle_is_refused_and_nothing_runs(tmp_path):
  convert_arniqa = pytest.importorskip("weights.convert_arniqa")
  marker = tmp_path / "ran.txt"
  payload = pickle.dumps(_Payload(str(marker)), protocol=2)
  path = tmp_path / "regressor_kadid10k.pth"
  _regressor_archive(path, payload)
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=r"refusing to load (__builtin__|builtins)\.exec"):
    convert_arniqa.convert(out, regressor=str(path))
  assert not marker.exists()
  assert not os.path.exists(convert_arniqa.regressor_path(out, "kadid10k"))
  pickle.loads(payload)
  assert marker.exists()  # the payload is real: plain unpickling runs it


def test_regressor_torchscript_code_is_never_run(tmp_path, capfd):
  import torch

  convert_arniqa = pytest.importorskip("weights.convert_arniqa")

  class Crafted(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.weights = torch.ones(1, 4096)
      self.biases = torch.zeros(1)

    def forward(self, x):
      return x @ self.weights.T + self.biases

    @torch.jit.export
    def __getstate__(self):
      return (self.weights, self.biases, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, torch.Tensor, bool]):
      print("CODE FROM THE WEIGHTS FILE RAN")
      self.weights = state[0]
      self.biases = state[1]
      self.training = state[2]

  path = tmp_path / "regressor_kadid10k.pth"
  torch.jit.save(torch.jit.script(Crafted()), str(path))
  capfd.readouterr()
  with pytest.raises(ValueError, match="expected 'weights' and 'biases'"):
    convert_arniqa.read_regressor(path)
  assert "CODE FROM THE WEIGHTS FILE RAN" not in capfd.readouterr().out
  torch.jit.load(str(path))
  assert "CODE FROM THE WEIGHTS FILE RAN" in capfd.readouterr().out  # torch.jit.load runs it
