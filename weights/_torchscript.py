"""Tensors of a TorchScript archive, read without running anything from the file.

A TorchScript file (`torch.jit.save`) is a zip holding `<name>/data.pkl` (the module's
attributes, pickled), `<name>/data/<key>` (raw tensor storages) and `<name>/code/` (the
module's TorchScript source). `torch.jit.load` compiles and runs that code (a crafted
`__setstate__` runs at load time), and `torch.load(weights_only=True)` refuses such archives.
`read_tensors` instead unpickles `data.pkl` with an allow-list: tensor rebuilding (done here
with numpy, from the storages in the zip), `OrderedDict`, storage types, and inert stand-ins
for the archive's own `__torch__.*` classes, whose state is recorded and never interpreted.
Any other global in the pickle is refused; the code folder is never read.

Nothing is allocated beyond the archive's own bytes: each storage is read once, only when
stored uncompressed (as torch writes them) and holding the bytes its persistent id declares;
a tensor is a read-only view into its storage and may neither reach past it nor claim more
values than it holds (zero strides could otherwise turn one stored number into 100000 ×
100000 values when copied). Module state that refers to itself or nests deeper than
`MAX_DEPTH` levels is refused.
"""

import collections
import io
import math
import os
import pickle
import reprlib
import zipfile
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
  "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


# Modules nest a few levels (a network's submodules); deeper state is not a weights file.
MAX_DEPTH = 100


class TorchScriptError(ValueError):
  """A file that is not a TorchScript archive this reader accepts (one-line message)."""


class _ScriptObject:
  """Stand-in for an archive class: keeps the pickled state, runs none of the class's code."""

  def __setstate__(self, state: Any) -> None:
    self.state = state


class _StorageType:
  def __init__(self, dtype: type) -> None:
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_) -> np.ndarray:
  """`torch._utils._rebuild_tensor_v2` in numpy: a read-only view into `storage`, bounds-checked
  (it neither reaches past the storage nor holds more values than the storage)."""
  size, stride = tuple(size), tuple(stride)
  numbers = size + stride + (offset,)
  if (len(size) != len(stride) or not all(type(n) is int for n in numbers)
      or min(numbers, default=0) < 0):
    raise pickle.UnpicklingError(f"invalid tensor layout {reprlib.repr(size)} / "
                                 f"{reprlib.repr(stride)}")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
  if end > storage.size or math.prod(size) > storage.size - offset:
    raise pickle.UnpicklingError(f"tensor {reprlib.repr(size)} with strides "
                                 f"{reprlib.repr(stride)} claims more values than its storage "
                                 f"holds ({storage.size})")
  return np.lib.stride_tricks.as_strided(storage[offset:], size,
                                         tuple(s * storage.itemsize for s in stride),
                                         writeable=False)


def _rebuild_parameter(data: np.ndarray, *_) -> np.ndarray:
  return data


def _restore_type_tag(value: Any, _tag: str) -> Any:
  return value


class _Unpickler(pickle.Unpickler):
  """Unpickles `data.pkl` with the allow-list of the module docstring."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
    super().__init__(io.BytesIO(data))
    self._archive, self._prefix = archive, prefix
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    allowed = {
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
      ("collections", "OrderedDict"): collections.OrderedDict,
    }
    if (module, name) in allowed:
      return allowed[module, name]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if module == "__torch__" or module.startswith("__torch__."):
      return type(name, (_ScriptObject,), {})
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
            and type(pid[4]) is int and pid[4] >= 0):
      raise pickle.UnpicklingError(f"unsupported persistent id {reprlib.repr(pid)}")
    _, kind, key, _, numel = pid
    if key not in self._storages:
      self._storages[key] = self._read_storage(key, numel * kind.dtype.itemsize)
    raw = self._storages[key]
    if raw.size < numel * kind.dtype.itemsize:
      raise pickle.UnpicklingError(f"storage {key} holds {raw.size} bytes, needs "
                                   f"{numel * kind.dtype.itemsize}")
    return raw[:numel * kind.dtype.itemsize].view(kind.dtype)

  def _read_storage(self, key: str, needed: int) -> np.ndarray:
    """The bytes of storage `key`, checked before reading: stored uncompressed, `needed` long."""
    info = self._archive.getinfo(f"{self._prefix}data/{key}")
    if info.compress_type != zipfile.ZIP_STORED:
      raise pickle.UnpicklingError(f"storage {key} is compressed (torch stores storages as is)")
    if info.file_size < needed:
      raise pickle.UnpicklingError(f"storage {key} holds {info.file_size} bytes, needs {needed}")
    return np.frombuffer(self._archive.read(info), np.uint8)


def _tensors(value: Any, prefix: str, out: dict[str, np.ndarray],
             parents: tuple[int, ...] = ()) -> None:
  """Collects the arrays in a module's state as `a.b.c` keys (submodules recursed)."""
  if isinstance(value, _ScriptObject):
    value = getattr(value, "state", None)
  if isinstance(value, dict):
    if id(value) in parents:
      raise TorchScriptError(f"module state {reprlib.repr(prefix[:-1])} refers to itself")
    if len(parents) >= MAX_DEPTH:
      raise TorchScriptError(f"module state nested more than {MAX_DEPTH} levels deep")
    for key, item in value.items():
      if isinstance(key, str):
        _tensors(item, f"{prefix}{key}.", out, parents + (id(value),))
  elif isinstance(value, np.ndarray):
    out[prefix[:-1]] = value


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensor attributes (parameters and buffers) of a TorchScript archive, by dotted name.

  Raises:
    TorchScriptError: not a zip TorchScript archive, a refused pickle global, a big-endian or
      malformed archive, a tensor or storage whose size does not fit (module docstring), or
      self-referencing or too deeply nested module state.
  """
  name = os.fspath(path)
  try:
    with zipfile.ZipFile(name) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
      if len(pickles) != 1:
        raise TorchScriptError(f"{name}: not a TorchScript archive (no single <name>/data.pkl)")
      prefix = pickles[0][:-len("data.pkl")]
      order = prefix + "byteorder"
      if order in archive.namelist() and archive.read(order).strip() != b"little":
        raise TorchScriptError(f"{name}: big-endian archives are not supported")
      root = _Unpickler(archive.read(pickles[0]), archive, prefix).load()
  except TorchScriptError:
    raise
  except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, EOFError, ValueError,
          TypeError, AttributeError, IndexError, OSError) as e:
    raise TorchScriptError(f"{name}: cannot read as a TorchScript archive "
                           f"({' '.join(str(e).split())})") from None
  out: dict[str, np.ndarray] = {}
  try:
    _tensors(root, "", out)
  except TorchScriptError as e:
    raise TorchScriptError(f"{name}: {e}") from None
  return out
