"""Atomic writes leave the old file or the new one, never half of one; hashes follow content."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.storage import atomic_write, content_hash


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.txt"
    with atomic_write(target, "w", encoding="utf-8") as stream:
        stream.write("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"), atomic_write(target) as stream:
        stream.write(b"half of the new")
        raise RuntimeError("killed halfway")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # no temp file left


def test_content_hash_follows_bytes_not_names(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"same bytes")
    (tmp_path / "b.png").write_bytes(b"same bytes")
    (tmp_path / "c.jpg").write_bytes(b"other bytes")
    assert content_hash(tmp_path / "a.jpg") == content_hash(tmp_path / "b.png")
    assert content_hash(tmp_path / "a.jpg") != content_hash(tmp_path / "c.jpg")
    # SHA-256 of the empty input, a fixed known value.
    (tmp_path / "empty").write_bytes(b"")
    assert content_hash(tmp_path / "empty").startswith("e3b0c44298fc1c149afbf4c8996fb924")
