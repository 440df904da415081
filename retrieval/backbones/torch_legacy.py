"""Read PyTorch state-dict files into numpy arrays without importing torch.

Supports the legacy (pre-1.6) stream format and the zip format of ``torch.save``. The pickle
inside is read with a restricted unpickler that resolves only tensor-rebuilding globals and
storage types; any other global (``os.system``, arbitrary classes) is refused.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

__all__ = [
    "CheckpointError",
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "read_torch_state_dict",
]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> (numpy dtype, element size in bytes). BFloat16 has no numpy
# dtype: it is read as uint16 and widened to float32 when the tensor is built.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(np.uint16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class CheckpointError(ValueError):
    """Base class for errors reading a PyTorch checkpoint."""


class CheckpointFormatError(CheckpointError):
    """The file is not a readable PyTorch checkpoint (wrong format, truncated, inconsistent)."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint's pickle references a global that a plain state dict never needs."""


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    """A flat storage; ``data`` is filled once its bytes have been read."""

    key: str
    storage_type: _StorageType
    numel: int
    data: np.ndarray | None = None


@dataclass
class _StorageView:
    """A slice of a root storage (legacy files with view metadata)."""

    root: _Storage
    offset: int
    numel: int


@dataclass
class _TensorRef:
    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRef:
    if not isinstance(storage, _Storage | _StorageView):
        raise CheckpointFormatError(f"tensor rebuilt from a non-storage object {type(storage)}")
    try:
        return _TensorRef(
            storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride))
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointFormatError(f"bad tensor metadata: {exc}") from exc


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_rest: Any
) -> _TensorRef:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


_ALLOWED_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only state-dict globals and hands storages to a callback."""

    def __init__(self, file: IO[bytes], path: str, load_storage: Any = None) -> None:
        super().__init__(file)
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_FUNCTIONS:
            return _ALLOWED_FUNCTIONS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise UnsafeCheckpointError(
            f"{self._path}: refusing to load global {module}.{name}; only tensors, storages "
            "and OrderedDict are allowed in a state dict"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._load_storage is None:
            raise CheckpointFormatError(f"{self._path}: unexpected persistent id {pid!r}")
        return self._load_storage(pid)


def _parse_storage_pid(pid: Any, path: str) -> tuple[_StorageType, str, int, Any]:
    """Return (type, key, numel, view_metadata) from a ('storage', ...) persistent id."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise CheckpointFormatError(f"{path}: unsupported persistent id {pid!r}")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
        raise CheckpointFormatError(f"{path}: persistent id names no storage type: {pid!r}")
    view = pid[5] if len(pid) == 6 else None
    return storage_type, str(key), int(numel), view


def _materialize(obj: Any, path: str) -> Any:
    """Replace every tensor reference in nested dicts/lists/tuples by a numpy array."""
    if isinstance(obj, _TensorRef):
        return _tensor_to_numpy(obj, path)
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for key, value in obj.items():
            out[key] = _materialize(value, path)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v, path) for v in obj)
    if isinstance(obj, _Storage | _StorageView):
        raise CheckpointFormatError(f"{path}: bare storage outside a tensor is not supported")
    return obj


def _tensor_to_numpy(ref: _TensorRef, path: str) -> np.ndarray:
    storage = ref.storage
    if isinstance(storage, _StorageView):
        root, base, numel = storage.root, storage.offset, storage.numel
    else:
        root, base, numel = storage, 0, storage.numel
    if root.data is None:
        raise CheckpointFormatError(f"{path}: storage {root.key} has no data")
    flat = root.data[base : base + numel]
    if len(ref.size) != len(ref.stride):
        raise CheckpointFormatError(
            f"{path}: tensor size {ref.size} and stride {ref.stride} differ"
        )
    if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise CheckpointFormatError(f"{path}: negative size, stride or offset in a tensor")
    if 0 in ref.size:
        out = np.zeros(ref.size, dtype=flat.dtype)
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
        if last >= flat.shape[0]:
            raise CheckpointFormatError(
                f"{path}: tensor of size {ref.size} at offset {ref.offset} overruns its storage "
                f"of {flat.shape[0]} elements"
            )
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset :], shape=ref.size, strides=tuple(s * item for s in ref.stride)
        )
        out = np.array(view, copy=True, order="C")
    if root.storage_type.name == "BFloat16Storage":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _decode_storage_bytes(raw: bytes, storage: _Storage, little_endian: bool) -> np.ndarray:
    dtype = storage.storage_type.dtype.newbyteorder("<" if little_endian else ">")
    return np.frombuffer(raw, dtype=dtype).astype(storage.storage_type.dtype, copy=True)


def _read_legacy(f: IO[bytes], path: str) -> Any:
    def load_plain() -> Any:
        return _RestrictedUnpickler(f, path).load()

    try:
        magic = load_plain()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointFormatError(
            f"{path}: not a PyTorch checkpoint (no legacy header pickle): {exc}"
        ) from exc
    if magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointFormatError(f"{path}: not a PyTorch checkpoint (bad magic number)")

    storages: dict[str, _Storage] = {}

    def load_storage(pid: Any) -> _Storage | _StorageView:
        storage_type, key, numel, view = _parse_storage_pid(pid, path)
        root = storages.setdefault(key, _Storage(key, storage_type, numel))
        if root.storage_type != storage_type or root.numel != numel:
            raise CheckpointFormatError(f"{path}: storage {key} described inconsistently")
        if view is None:
            return root
        _view_key, view_offset, view_numel = view
        return _StorageView(root, int(view_offset), int(view_numel))

    try:
        protocol = load_plain()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointFormatError(f"{path}: unsupported legacy protocol {protocol!r}")
        sys_info = load_plain()
        little_endian = bool(sys_info.get("little_endian", True))
        result = _RestrictedUnpickler(f, path, load_storage).load()
        keys = load_plain()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointFormatError(
            f"{path}: truncated or corrupt PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc

    if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
        raise CheckpointFormatError(f"{path}: storage key list does not match the tensors")
    count_format = "<q" if little_endian else ">q"
    for key in keys:
        storage = storages[str(key)]
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointFormatError(f"{path}: truncated before the data of storage {key}")
        (count,) = struct.unpack(count_format, header)
        if count != storage.numel:
            raise CheckpointFormatError(
                f"{path}: storage {key} holds {count} elements, expected {storage.numel}"
            )
        nbytes = count * storage.storage_type.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise CheckpointFormatError(
                f"{path}: truncated in the data of storage {key} ({len(raw)} of {nbytes} bytes)"
            )
        storage.data = _decode_storage_bytes(raw, storage, little_endian)
    return result


def _read_zip(path: str) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointFormatError(f"{path}: unreadable zip checkpoint: {exc}") from exc
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{path}: zip file holds no single '<dir>/data.pkl'")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        little_endian = True
        if prefix + "byteorder" in names:
            little_endian = archive.read(prefix + "byteorder").strip() != b"big"
        storages: dict[str, _Storage] = {}

        def load_storage(pid: Any) -> _Storage:
            storage_type, key, numel, _view = _parse_storage_pid(pid, path)
            if key in storages:
                return storages[key]
            member = f"{prefix}data/{key}"
            if member not in names:
                raise CheckpointFormatError(f"{path}: missing storage member {member}")
            raw = archive.read(member)
            nbytes = numel * storage_type.dtype.itemsize
            if len(raw) < nbytes:
                raise CheckpointFormatError(
                    f"{path}: storage {member} has {len(raw)} bytes, expected {nbytes}"
                )
            storage = _Storage(key, storage_type, numel)
            storage.data = _decode_storage_bytes(raw[:nbytes], storage, little_endian)
            storages[key] = storage
            return storage

        try:
            with archive.open(pickles[0]) as f:
                return _RestrictedUnpickler(f, path, load_storage).load()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointFormatError(
                f"{path}: corrupt data.pkl ({type(exc).__name__}: {exc})"
            ) from exc


def read_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``torch.save``-d state dict (legacy or zip format) as name -> numpy array.

    Raises UnsafeCheckpointError for pickles that reference non-tensor globals and
    CheckpointFormatError for truncated, corrupt or non-checkpoint files.
    """
    path_str = os.fspath(path)
    if not os.path.isfile(path_str):
        raise FileNotFoundError(f"checkpoint file not found: {path_str}")
    if zipfile.is_zipfile(path_str):
        result = _read_zip(path_str)
    else:
        with open(path_str, "rb") as f:
            result = _read_legacy(f, path_str)
    result = _materialize(result, path_str)
    if isinstance(result, dict) and isinstance(result.get("state_dict"), dict):
        result = result["state_dict"]
    if not isinstance(result, dict):
        raise CheckpointFormatError(
            f"{path_str}: checkpoint holds a {type(result).__name__}, not a dict"
        )
    state: dict[str, np.ndarray] = {}
    for key, value in result.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointFormatError(
                f"{path_str}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        state[str(key)] = value
    return state
