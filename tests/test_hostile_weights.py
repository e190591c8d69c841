"""Hostile weights files given to the converters: each ends in one line naming the file and exit
code 2, allocates nothing beyond the file's own bytes, runs nothing from the file, and never
advises loading it unsafely. The files are built here: TorchScript archives with a hand-made
`data.pkl` (pickled with references to torch's own rebuild functions, as `torch.jit.save`
writes them), and `.pth` files written by `torch.save`."""

import collections
import io
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from weights import convert_arniqa, convert_vgg

ROOT = pathlib.Path(__file__).resolve().parents[1]
HUGE = (100000, 100000)  # 37 GiB of float32 when materialised


class _Storage:
  """Stands for storage `key` of `numel` float32 values (a persistent id in the pickle)."""

  def __init__(self, key: str, numel: int):
    self.key, self.numel = key, numel


class _Tensor:
  """Pickles as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`."""

  def __init__(self, storage: _Storage, size: tuple, stride: tuple, offset: int = 0):
    self.args = (storage, offset, size, stride, False, collections.OrderedDict())

  def __reduce__(self):
    return (torch._utils._rebuild_tensor_v2, self.args)


class _Pickler(pickle.Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
    return None


def _data_pkl(root) -> bytes:
  buffer = io.BytesIO()
  _Pickler(buffer, protocol=2).dump(root)
  return buffer.getvalue()


def _archive(path: pathlib.Path, root, storages: dict[str, bytes],
             compress: int = zipfile.ZIP_STORED) -> pathlib.Path:
  """A TorchScript-layout zip: `m/data.pkl` pickling `root`, `m/data/<key>` storages."""
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("m/data.pkl", _data_pkl(root))
    z.writestr("m/byteorder", "little")
    for key, raw in storages.items():
      z.writestr(f"m/data/{key}", raw, compress_type=compress)
  return path


def _regressor(**tensors) -> dict:
  """A regressor module's state: `weights` [1, 4096] and `biases` [1] (both stored)."""
  return {"weights": _Tensor(_Storage("0", 4096), (1, 4096), (4096, 1)),
          "biases": _Tensor(_Storage("1", 1), (1,), (1,)), **tensors}


STORAGES = {"0": np.arange(4096, dtype="<f4").tobytes(), "1": np.float32(0.5).tobytes()}


def _convert_regressor(path: pathlib.Path, out: pathlib.Path, capsys) -> str:
  argv = [convert_arniqa.PROG, f"--regressor={path}", "--dataset=kadid10k",
          f"--output_dir={out}"]
  assert convert_arniqa.main(argv) == 2
  assert not out.exists()  # nothing written, not even the folder
  return _one_line(capsys, convert_arniqa.PROG, path)


def _one_line(capsys, prog: str, path: pathlib.Path) -> str:
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: {path}: "), err
  assert "weights_only" not in err and "trusted source" not in err and "Traceback" not in err
  return lines[0]


def test_a_well_formed_hand_made_regressor_is_read_exactly(tmp_path):
  """The builder itself is right: the same layout with honest sizes converts."""
  path = _archive(tmp_path / "r.pth", _regressor(), STORAGES)
  got = convert_arniqa.read_regressor(path)
  np.testing.assert_array_equal(got["weight"], np.arange(4096, dtype=np.float32))
  assert float(got["bias"]) == 0.5


def test_zero_strides_claiming_37_gib_are_refused_without_allocating(tmp_path):
  """0.5 KB of pickle: one stored float viewed as 100000 x 100000 values (zero strides). Run in
  a child process limited to 2 GiB of address space beyond its start, so an attempt to
  allocate the 37 GiB fails the test instead of the machine."""
  path = _archive(tmp_path / "regressor_kadid10k.pth",
                  _regressor(weights=_Tensor(_Storage("0", 1), HUGE, (0, 0))), STORAGES)
  assert os.path.getsize(path) < 20000
  code = (
    "import resource, sys\n"
    "from weights import convert_arniqa\n"
    "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
    "resource.setrlimit(resource.RLIMIT_AS, (used + (2 << 30), resource.RLIM_INFINITY))\n"
    f"sys.exit(convert_arniqa.main(['p', '--regressor={path}', '--output_dir={tmp_path}/o']))\n")
  proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"{convert_arniqa.PROG}: error: {path}: ")
  assert "storage" in lines[0]
  assert not (tmp_path / "o" / "arniqa_regressor_kadid10k.safetensors").exists()


def test_more_values_than_the_storage_holds_is_one_line(tmp_path, capsys):
  """Honest strides, but 4096 values from a storage of 4095 after the offset."""
  layout = _Tensor(_Storage("0", 4096), (1, 4096), (4096, 1), offset=1)
  path = _archive(tmp_path / "r.pth", _regressor(weights=layout), STORAGES)
  assert "storage" in _convert_regressor(path, tmp_path / "o", capsys)


def test_a_storage_shorter_than_its_declared_size_is_one_line(tmp_path, capsys):
  storages = {**STORAGES, "0": STORAGES["0"][:100]}
  path = _archive(tmp_path / "r.pth", _regressor(), storages)
  assert "storage 0" in _convert_regressor(path, tmp_path / "o", capsys)


def test_a_compressed_storage_is_refused_before_it_is_inflated(tmp_path, capsys):
  """Deflate turns 40 KB into 1 GB; torch never compresses storages, so none is inflated."""
  path = _archive(tmp_path / "r.pth", _regressor(), STORAGES, compress=zipfile.ZIP_DEFLATED)
  assert "compressed" in _convert_regressor(path, tmp_path / "o", capsys)


def test_a_self_referencing_pickle_is_one_line(tmp_path, capsys):
  root = _regressor()
  root["child"] = {"parent": root}
  path = _archive(tmp_path / "r.pth", root, STORAGES)
  assert "refers to itself" in _convert_regressor(path, tmp_path / "o", capsys)


def test_state_nested_thousands_deep_is_one_line(tmp_path, capsys):
  """{'sub': {'sub': ...}} 5000 levels deep, written opcode by opcode (pickle's own writer
  recurses and stops near 1000 levels; reading it back does not)."""
  depth = 5000
  data_pkl = (b"\x80\x02" + (b"}X\x03\x00\x00\x00sub") * depth + b"}" + b"s" * depth + b".")
  assert pickle.loads(data_pkl)["sub"]["sub"]["sub"] is not None
  path = tmp_path / "r.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("m/data.pkl", data_pkl)
  assert "nested more than" in _convert_regressor(path, tmp_path / "o", capsys)


def test_a_storage_referenced_many_times_is_read_once(tmp_path, monkeypatch):
  """100 000 references to one 16 KB storage: 1.6 GB if each reference read or copied it."""
  root = _regressor(many=[_Tensor(_Storage("0", 4096), (4096,), (1,))] * 100000)
  path = _archive(tmp_path / "r.pth", root, STORAGES)
  reads = []
  original = zipfile.ZipFile.read
  monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, *a: reads.append(
      getattr(name, "filename", name)) or original(self, name, *a))
  got = convert_arniqa.read_regressor(path)
  assert float(got["bias"]) == 0.5
  assert reads.count("m/data/0") == 1


# ---- .pth state dicts (torch.load) --------------------------------------------------------------

class _RunsCode:
  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _convert_pth(module, flag: str, path: pathlib.Path, tmp_path: pathlib.Path, capsys) -> str:
  out = ([f"--output={tmp_path / 'o.safetensors'}"] if module is convert_vgg
         else [f"--output_dir={tmp_path / 'o'}"])
  assert module.main([module.PROG, f"--{flag}={path}", *out]) == 2
  assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o").exists()
  return _one_line(capsys, module.PROG, path)


PTH_CONVERTERS = [(convert_vgg, "input"), (convert_arniqa, "encoder")]


@pytest.mark.parametrize("module,flag", PTH_CONVERTERS)
def test_a_code_running_pth_is_one_line_without_unsafe_advice(module, flag, tmp_path, capsys):
  marker = tmp_path / "ran"
  path = tmp_path / "evil.pth"
  torch.save({"features.0.weight": _RunsCode(str(marker))}, path)
  line = _convert_pth(module, flag, path, tmp_path, capsys)
  assert "posix.system" in line or "os.system" in line, line
  assert not marker.exists()


@pytest.mark.parametrize("module,flag", PTH_CONVERTERS)
def test_a_list_valued_pth_is_one_line(module, flag, tmp_path, capsys):
  path = tmp_path / "list.pth"
  torch.save([torch.ones(3)], path)
  assert "holds a list, not a state dict" in _convert_pth(module, flag, path, tmp_path, capsys)


@pytest.mark.parametrize("module,flag", PTH_CONVERTERS)
def test_a_pth_entry_that_is_not_a_tensor_is_one_line(module, flag, tmp_path, capsys):
  path = tmp_path / "mixed.pth"
  torch.save({"features.0.weight": torch.ones(3), "features.0.bias": [1.0, 2.0]}, path)
  line = _convert_pth(module, flag, path, tmp_path, capsys)
  assert "'features.0.bias' is a list" in line


@pytest.mark.parametrize("module,flag", PTH_CONVERTERS)
def test_a_pth_with_zero_strides_claiming_37_gib_is_one_line(module, flag, tmp_path, capsys):
  path = tmp_path / "huge.pth"
  torch.save({"features.0.weight": torch.ones(1).expand(*HUGE)}, path)
  assert os.path.getsize(path) < 5000
  line = _convert_pth(module, flag, path, tmp_path, capsys)
  assert "more values than its storage holds" in line


@pytest.mark.parametrize("module,flag", PTH_CONVERTERS)
def test_a_torchscript_archive_or_garbage_as_pth_is_one_line(module, flag, tmp_path, capsys):
  script = tmp_path / "script.pth"
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(script))
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"not a checkpoint at all")
  for path in (script, garbage):
    assert "not a PyTorch state dict" in _convert_pth(module, flag, path, tmp_path, capsys)
