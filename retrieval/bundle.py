"""Index bundles: one directory holding everything a search needs, written atomically.

Layout (format version 1)::

    manifest.json     format, version, bits, the caller's model reference, counts, next id,
                      and the size and sha256 of every other file (written last)
    codes.npy         (N, bits/8) uint8 packed codes, one row per metadata row
    features.npy      optional (N, D) float32 features for re-ranking
    metadata.jsonl    one JSON object per row: id, path, content_hash, group, added
    tombstones.jsonl  one JSON object per removed id: id, removed (time)
    model/            optional copy of the hash model directory that made the codes

Every write builds a complete new bundle in a hidden temp directory beside the target, then
swaps it into place with one rename (``renameat2(RENAME_EXCHANGE)`` on Linux), so an interrupted
build leaves the previous bundle loadable. Files are never modified in place, so an update
hard-links the files it does not change. ``load_bundle`` checks the version, sizes and
checksums and raises ``BundleError`` naming the file at fault. Ids are never reused.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.index import TIE_BREAK, BinaryIndex
from retrieval.storage import content_hash

FORMAT = "binary-index-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CODES = "codes.npy"
FEATURES = "features.npy"
METADATA = "metadata.jsonl"
TOMBSTONES = "tombstones.jsonl"
MODEL_DIR = "model"
_ROW_FILES = (CODES, FEATURES, METADATA, TOMBSTONES)


class BundleError(Exception):
    """A bundle is missing, corrupt, of another version, or inconsistent; names the file."""


@dataclass
class Bundle:
    """A loaded bundle: all rows (removed ones included) and which ids are removed."""

    path: Path
    manifest: dict[str, Any]
    codes: np.ndarray  # (N, bits/8) uint8
    metadata: list[dict[str, Any]]  # one per row, same order as codes
    features: np.ndarray | None  # (N, D) float32 or None
    removed: dict[int, str] = field(default_factory=dict)  # id -> removal time

    @property
    def bits(self) -> int:
        """Code length in bits."""
        return int(self.manifest["bits"])

    @property
    def model(self) -> dict[str, Any]:
        """The model reference the caller stored (opaque here)."""
        return self.manifest["model"]

    @property
    def model_dir(self) -> Path | None:
        """The bundle's own copy of the hash model directory, when it has one."""
        listed = any(name.startswith(f"{MODEL_DIR}/") for name in self.manifest["files"])
        return self.path / MODEL_DIR if listed else None

    @property
    def ids(self) -> np.ndarray:
        """Ids of all rows, in row order."""
        return np.asarray([row["id"] for row in self.metadata], dtype=np.int64)

    @property
    def live(self) -> np.ndarray:
        """Boolean mask of the rows not removed."""
        return ~np.isin(self.ids, np.fromiter(self.removed, np.int64, len(self.removed)))

    def __len__(self) -> int:
        return int(self.live.sum())

    def index(self, kind: str = "flat", **options: Any) -> BinaryIndex:
        """A ``BinaryIndex`` over the live rows (with features when the bundle has them)."""
        index = BinaryIndex(self.bits, kind, **options)
        live = self.live
        features = self.features[live] if self.features is not None else None
        index.add(self.codes[live], self.ids[live], features)
        return index

    def lookup(self, ids: Sequence[int] | np.ndarray) -> list[dict[str, Any] | None]:
        """Metadata rows for ids (e.g. search results); None for -1 or unknown ids."""
        by_id = {row["id"]: row for row in self.metadata}
        return [by_id.get(int(i)) for i in np.asarray(ids).reshape(-1)]


# ------------------------------------------------------------------------------ writing


def write_bundle(
    path: str | Path,
    codes: np.ndarray,
    *,
    model: dict[str, Any],
    paths: Sequence[str | Path],
    content_hashes: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
    features: np.ndarray | None = None,
    ids: Sequence[int] | np.ndarray | None = None,
    model_dir: str | Path | None = None,
) -> Bundle:
    """Create (or replace) a bundle from codes and their images; returns it loaded.

    Content hashes are computed with ``retrieval.storage.content_hash`` when not given.
    ``model_dir``'s files are copied into the bundle (``model/``), checksummed like the rest.
    """
    target = Path(path)
    codes = _as_codes(codes)
    rows = _new_rows(paths, len(codes), content_hashes, groups, ids, first_id=0)
    manifest = _base_manifest(model, bits=codes.shape[1] * 8)
    attachments = {}
    if model_dir is not None:
        attachments = {
            f"{MODEL_DIR}/{file.name}": file
            for file in sorted(Path(model_dir).iterdir())
            if file.is_file()
        }
        if not attachments:
            raise ValueError(f"{model_dir}: no model files to put in the bundle")
    with _locked(target):
        _commit(
            target,
            manifest,
            codes,
            _as_features(features, len(codes)),
            rows,
            {},
            None,
            attachments=attachments,
        )
    return load_bundle(target)


def add_to_bundle(
    path: str | Path,
    codes: np.ndarray,
    *,
    paths: Sequence[str | Path],
    content_hashes: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
    features: np.ndarray | None = None,
    ids: Sequence[int] | np.ndarray | None = None,
) -> Bundle:
    """Append rows to a bundle (new ids continue after every id ever used); returns it."""
    target = Path(path)
    with _locked(target):
        old = load_bundle(target)
        codes = _as_codes(codes)
        if codes.shape[1] * 8 != old.bits:
            raise ValueError(f"codes have {codes.shape[1] * 8} bits, the bundle {old.bits}")
        features = _as_features(features, len(codes))
        if (features is None) != (old.features is None):
            raise ValueError(
                "the bundle has features: give them"
                if features is None
                else "the bundle has no features: add none"
            )
        if features is not None and features.shape[1] != old.features.shape[1]:
            raise ValueError(
                f"features are {features.shape[1]}-d, the bundle's {old.features.shape[1]}-d"
            )
        rows = _new_rows(paths, len(codes), content_hashes, groups, ids, old.manifest["next_id"])
        clash = set(int(r["id"]) for r in rows) & (set(old.ids.tolist()) | set(old.removed))
        if clash:
            raise ValueError(f"ids already used in the bundle: {sorted(clash)[:5]}")
        all_features = None if features is None else np.concatenate([old.features, features])
        _commit(
            target,
            old.manifest,
            np.concatenate([old.codes, codes]),
            all_features,
            old.metadata + rows,
            old.removed,
            old.path,
            unchanged=(TOMBSTONES,),
        )
    return load_bundle(target)


def remove_from_bundle(
    path: str | Path, ids: Sequence[int] | np.ndarray, *, compact: bool = False
) -> Bundle:
    """Tombstone ids (already removed ones are ignored; unknown ids raise ValueError).

    ``compact=True`` also drops the removed rows from the files (their tombstones stay).
    """
    target = Path(path)
    with _locked(target):
        old = load_bundle(target)
        wanted = {int(i) for i in np.asarray(ids).reshape(-1)}
        unknown = wanted - set(old.ids.tolist()) - set(old.removed)
        if unknown:
            raise ValueError(f"ids not in the bundle: {sorted(unknown)[:5]}")
        now = _now()
        removed = dict(old.removed) | {i: now for i in sorted(wanted - set(old.removed))}
        codes, features, metadata = old.codes, old.features, old.metadata
        unchanged: tuple[str, ...] = (CODES, FEATURES, METADATA)
        if compact:
            keep = ~np.isin(old.ids, np.fromiter(removed, np.int64, len(removed)))
            codes = codes[keep]
            features = features[keep] if features is not None else None
            metadata = [row for row, k in zip(metadata, keep, strict=True) if k]
            unchanged = ()
        _commit(target, old.manifest, codes, features, metadata, removed, old.path, unchanged)
    return load_bundle(target)


def _commit(
    target: Path,
    manifest: dict[str, Any],
    codes: np.ndarray,
    features: np.ndarray | None,
    metadata: list[dict[str, Any]],
    removed: dict[int, str],
    previous: Path | None,
    unchanged: Sequence[str] = (),
    attachments: dict[str, Path] | None = None,
) -> None:
    """Write a complete bundle into a temp dir beside ``target``, then swap it into place.

    ``attachments`` (bundle name -> source file) are copied in; an update carries over the
    previous bundle's attachments unchanged.
    """
    _refuse_non_bundle(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        files: dict[str, dict[str, Any]] = {}
        old_files = manifest.get("files", {}) if previous is not None else {}
        for name, write in (
            (CODES, lambda p: _save_array(p, codes)),
            (FEATURES, (lambda p: _save_array(p, features)) if features is not None else None),
            (METADATA, lambda p: _write_jsonl(p, metadata)),
            (TOMBSTONES, lambda p: _write_jsonl(p, _tombstone_rows(removed))),
        ):
            if write is None:
                continue
            if name in unchanged and name in old_files:
                _link_or_copy(previous / name, temp / name)
                files[name] = old_files[name]
            else:
                write(temp / name)
                files[name] = _file_entry(temp / name)
        for name, source in (attachments or {}).items():
            (temp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, temp / name)
            files[name] = _file_entry(temp / name)
        for name, entry in old_files.items():
            if name not in _ROW_FILES and name not in files:
                (temp / name).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(previous / name, temp / name)
                files[name] = entry
        live = sum(1 for row in metadata if row["id"] not in removed)
        all_ids = [row["id"] for row in metadata] + list(removed)
        new_manifest = dict(manifest)
        new_manifest.update(
            counts={"rows": len(metadata), "live": live, "removed": len(removed)},
            next_id=max([manifest.get("next_id", 0), *(i + 1 for i in all_ids)]),
            feature_dim=None if features is None else int(features.shape[1]),
            updated=_now(),
            files=files,
        )
        _write_json(temp / MANIFEST, new_manifest)
        _fsync_dir(temp)
        _swap_into_place(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------ loading


def load_bundle(path: str | Path, *, verify: bool = True, mmap: bool = False) -> Bundle:
    """Load and validate a bundle; ``verify`` checks sha256 sums, ``mmap`` maps the arrays."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: no bundle directory here")
    if not manifest_path.is_file():
        raise BundleError(
            f"{manifest_path}: missing (not a bundle, or a build that never finished)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path}: unreadable ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format version {version!r} is not supported (this code reads "
            f"version {FORMAT_VERSION}); rebuild the bundle with this version"
        )
    try:
        bits, counts, files = int(manifest["bits"]), manifest["counts"], manifest["files"]
        rows_expected = int(counts["rows"])
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{manifest_path}: incomplete manifest ({error!r})") from error
    required = [CODES, METADATA, TOMBSTONES] + ([FEATURES] if manifest.get("feature_dim") else [])
    for name in required:
        if name not in files:
            raise BundleError(f"{manifest_path}: does not list {name}")
    for name, entry in files.items():
        _check_file(root / name, entry, verify)

    codes = _load_array(root / CODES, mmap)
    if codes.dtype != np.uint8 or codes.shape != (rows_expected, bits // 8):
        raise BundleError(
            f"{root / CODES}: {codes.dtype} {codes.shape}, expected uint8 "
            f"({rows_expected}, {bits // 8}) for {rows_expected} rows of {bits} bits"
        )
    metadata = _read_jsonl(root / METADATA)
    if len(metadata) != rows_expected:
        raise BundleError(f"{root / METADATA}: {len(metadata)} rows, {CODES} has {rows_expected}")
    ids = [row.get("id") for row in metadata]
    if not all(isinstance(i, int) for i in ids) or len(set(ids)) != len(ids):
        raise BundleError(f"{root / METADATA}: ids must be unique integers")
    features = None
    if FEATURES in files:
        features = _load_array(root / FEATURES, mmap)
        dim = manifest.get("feature_dim")
        if features.dtype != np.float32 or features.shape != (rows_expected, dim):
            raise BundleError(
                f"{root / FEATURES}: {features.dtype} {features.shape}, expected float32 "
                f"({rows_expected}, {dim})"
            )
    removed = {}
    for row in _read_jsonl(root / TOMBSTONES):
        if not isinstance(row.get("id"), int):
            raise BundleError(f"{root / TOMBSTONES}: a row without an integer id")
        removed[row["id"]] = str(row.get("removed", ""))
    bundle = Bundle(root, manifest, codes, metadata, features, removed)
    live = len(bundle)
    if (live, len(removed)) != (counts.get("live"), counts.get("removed")):
        raise BundleError(
            f"{manifest_path}: counts {counts} disagree with the files "
            f"(live {live}, removed {len(removed)})"
        )
    return bundle


# ------------------------------------------------------------------------------ helpers


def _base_manifest(model: dict[str, Any], bits: int) -> dict[str, Any]:
    try:
        json.dumps(model)
    except (TypeError, ValueError) as error:
        raise ValueError(f"model reference must be JSON-serialisable: {error}") from error
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bits": bits,
        "model": model,
        "tie_break": TIE_BREAK,
        "created": _now(),
        "next_id": 0,
    }


def _as_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(f"codes must be packed (N, bits/8) uint8, got {codes.dtype} {codes.shape}")
    return np.ascontiguousarray(codes)


def _as_features(features: np.ndarray | None, n: int) -> np.ndarray | None:
    if features is None:
        return None
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != n:
        raise ValueError(f"features must be (N={n}, D), got {features.shape}")
    return features


def _new_rows(
    paths: Sequence[str | Path],
    n: int,
    content_hashes: Sequence[str] | None,
    groups: Sequence[Any] | None,
    ids: Sequence[int] | np.ndarray | None,
    first_id: int,
) -> list[dict[str, Any]]:
    """Metadata rows for new codes; content hashes come from ``retrieval.features``."""
    if len(paths) != n:
        raise ValueError(f"{len(paths)} paths for {n} codes")
    for name, values in (("content_hashes", content_hashes), ("groups", groups), ("ids", ids)):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {name} for {n} codes")
    if content_hashes is None:
        content_hashes = [content_hash(p) for p in paths]
    new_ids = list(range(first_id, first_id + n)) if ids is None else [int(i) for i in ids]
    if len(set(new_ids)) != n:
        raise ValueError("ids must be unique")
    added = _now()
    return [
        {
            "id": new_ids[i],
            "path": str(paths[i]),
            "content_hash": str(content_hashes[i]),
            "group": None if groups is None else _json_scalar(groups[i]),
            "added": added,
        }
        for i in range(n)
    ]


def _json_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _tombstone_rows(removed: dict[int, str]) -> list[dict[str, Any]]:
    return [{"id": i, "removed": when} for i, when in removed.items()]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as stream:
        np.save(stream, np.ascontiguousarray(array), allow_pickle=False)
        stream.flush()
        os.fsync(stream.fileno())


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(row, sort_keys=True) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(payload, stream, indent=2, sort_keys=True)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())


def _file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": content_hash(path)}


def _check_file(path: Path, entry: Any, verify: bool) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: missing (listed in {MANIFEST})")
    if not isinstance(entry, dict) or "bytes" not in entry or "sha256" not in entry:
        raise BundleError(f"{path.parent / MANIFEST}: bad entry for {path.name}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise BundleError(
            f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
        )
    if verify and content_hash(path) != entry["sha256"]:
        raise BundleError(f"{path}: sha256 differs from the manifest (file modified or corrupt)")


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise BundleError(f"{path}: not a readable .npy array ({error})") from error


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        with open(path, encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise BundleError(f"{path}:{number}: not a JSON object")
                rows.append(row)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: unreadable ({error})") from error
    return rows


def _link_or_copy(source: Path, destination: Path) -> None:
    """Files are immutable once written, so a hard link is a safe, free copy."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _fsync_dir(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _refuse_non_bundle(target: Path) -> None:
    """Never replace a directory that holds something other than a bundle."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise BundleError(f"{target}: exists and is not a bundle directory; refusing to replace")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).exists():
        raise BundleError(
            f"{target}: a non-empty directory without {MANIFEST}; refusing to replace"
        )


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    return result == 0


def _swap_into_place(temp: Path, target: Path) -> None:
    """Put the finished ``temp`` at ``target``; the old bundle is valid until the swap."""
    if not target.exists():
        os.rename(temp, target)
    elif _exchange(temp, target):
        shutil.rmtree(temp)  # now holds the old bundle
    else:  # two renames: a crash between them leaves the old bundle at the .old- name
        backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, backup)
        os.rename(temp, target)
        shutil.rmtree(backup)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """One writer per bundle at a time; stale temp dirs of dead writers are cleared."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in target.parent.glob(f".{target.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            backups = sorted(target.parent.glob(f".{target.name}.old-*"))
            if backups and not target.exists():  # a writer died between its two renames
                os.rename(backups[-1], target)
            for stale in target.parent.glob(f".{target.name}.old-*"):
                shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
