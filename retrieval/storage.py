"""File primitives shared by every writer: content hashes and atomic writes (temp, then rename)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): an image's identity, whatever its name."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_key(file_hash: str, box: Sequence[float] | None = None) -> str:
    """Identity of an image as the model sees it: its content hash, and its crop box if any."""
    if box is None:
        return file_hash
    box_text = ",".join(f"{float(v):.2f}" for v in box)
    return hashlib.sha256(f"{file_hash}|box={box_text}".encode()).hexdigest()


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success it is renamed over ``path``, else deleted.

    Readers therefore see the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, **open_kwargs) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
