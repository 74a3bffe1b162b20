"""Read a PyTorch state dict saved in PyTorch's legacy format, without PyTorch and without running code.

A `.pth` file written by PyTorch before 1.6 (or with `_use_new_zipfile_serialization=False`)
holds, one after the other: pickles of a magic number, of the format's version (1001) and
of the writer's `sys_info`; the pickled state dict, whose tensors are
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`
with each storage a persistent id `('storage', torch.FloatStorage, key, device, numel,
None)`; a pickled list of the storage keys; then, for each key in that order, the
storage's element count (8 bytes, little-endian) and its raw little-endian elements.

A pickle may name any importable function and have it called while it loads
(`os.system`, `builtins.eval`); `torch.load` trusted such files until PyTorch 2.6. The
unpickler here resolves only `collections.OrderedDict`, `_rebuild_tensor_v2` and the
storage types, each to a stand-in of its own, and refuses any other name before anything
is called (UnsafePickleError). Reading the 18 MB EfficientNet-Lite0 file takes ~0.04 s.
"""

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phases.errors import ConfigError, UnsafePickleError

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_PROTOCOL_VERSION = 1001
# PyTorch's storage types -> the NumPy type of their little-endian elements.
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


@dataclass
class _Storage:
    """A storage named in the pickle; its elements are read after the pickle (`elements`)."""

    dtype: np.dtype
    numel: int
    elements: np.ndarray | None = None


@dataclass
class _Tensor:
    """A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage, in elements."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> np.ndarray:
        """The tensor's values as a C-contiguous array of its own (no view of the storage)."""
        if 0 in self.size:
            return np.zeros(self.size, self.storage.dtype)
        if self.storage.elements is None:
            raise ValueError("its storage is not in the file's list of storages")
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if self.offset < 0 or min(self.stride, default=0) < 0 or extent > self.storage.numel:
            raise ValueError(f"offset {self.offset}, size {self.size}, stride {self.stride} reach past its storage")
        item = self.storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage.elements[self.offset:], shape=self.size, strides=[s * item for s in self.stride]
        )
        return np.array(view, order="C")


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Stand-in for `torch._utils._rebuild_tensor_v2`: records the view, reads nothing yet."""
    return _Tensor(storage, int(offset), tuple(size), tuple(stride))


class _StorageType:
    """Stand-in for a `torch.<Type>Storage` class: only carries the element type."""

    def __init__(self, dtype: str):
        self.dtype = np.dtype(dtype)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that knows tensors, storages and OrderedDict, and refuses every other global."""

    def __init__(self, handle, path: Path):
        super().__init__(handle)
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafePickleError(
            f"{self.path}: names the Python global {module}.{name}, which is not a tensor, a storage or an "
            "OrderedDict; loading it could run code, so it was refused before anything ran. Use a state dict "
            "of tensors saved by torch.save, from a source you trust"
        )

    def persistent_load(self, persistent_id):
        if not (isinstance(persistent_id, tuple) and len(persistent_id) == 6 and persistent_id[0] == "storage"):
            raise ValueError(f"unknown persistent id {persistent_id!r}")
        _, storage_type, key, _device, numel, view_metadata = persistent_id
        if not isinstance(storage_type, _StorageType) or view_metadata is not None:
            raise ValueError(f"storage {key!r}: views of storages and unknown storage types are not supported")
        storage = self.storages.setdefault(str(key), _Storage(storage_type.dtype, int(numel)))
        return storage


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format PyTorch state dict, in the file's order: name -> array.

    Arrays keep PyTorch's layout (a convolution kernel is [out, in, kh, kw]) and element
    type (float32, int64 for BatchNorm's `num_batches_tracked`). Raises UnsafePickleError
    for a pickle naming any other global, ConfigError for a file that is not this format.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if handle.read(4) == b"PK\x03\x04":
                raise ValueError("a zip archive, PyTorch >= 1.6's format")
            handle.seek(0)
            header = [_RestrictedUnpickler(handle, path).load() for _ in range(3)]
            if header[0] != _MAGIC_NUMBER or header[1] != _PROTOCOL_VERSION:
                raise ValueError("no legacy magic number")
            if not header[2].get("little_endian", False):
                raise ValueError("written on a big-endian machine")
            unpickler = _RestrictedUnpickler(handle, path)
            state = unpickler.load()
            keys = _RestrictedUnpickler(handle, path).load()
            for key in keys:
                storage = unpickler.storages[str(key)]
                (count,) = struct.unpack("<q", handle.read(8))
                data = handle.read(count * storage.dtype.itemsize)
                if count != storage.numel or len(data) != count * storage.dtype.itemsize:
                    raise ValueError(f"storage {key}: {len(data)} bytes where {storage.numel} elements were announced")
                storage.elements = np.frombuffer(data, storage.dtype)
            if not isinstance(state, dict) or not all(isinstance(value, _Tensor) for value in state.values()):
                raise ValueError("the pickle is not a state dict of tensors (a whole checkpoint or model?)")
            arrays = {}
            for name, tensor in state.items():
                try:
                    arrays[name] = tensor.array()
                except ValueError as error:
                    raise ValueError(f"tensor {name}: {error}") from None
            return arrays
    except UnsafePickleError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, EOFError, pickle.UnpicklingError, struct.error) as error:
        raise ConfigError(
            f"{path}: not a PyTorch state dict in the legacy (pre-1.6, non-zip) format ({error}); "
            "re-save it with torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)"
        ) from None
