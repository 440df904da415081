"""Finding image files on disk, shared by every folder-based loader."""

from __future__ import annotations

from pathlib import Path

from retrieval.datasets.base import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def _is_hidden(path: Path, root: Path) -> bool:
    # Hidden entries include macOS "._name.jpg" resource forks, which are not images.
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_image_files(root: Path, recursive: bool = False) -> list[Path]:
    """Image files under ``root`` (by extension, case-insensitive), sorted by relative path.

    Hidden files and folders (names starting with ".") are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = [
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_EXTENSIONS and not _is_hidden(p, root) and p.is_file()
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def image_folder(root: Path, subfolder: str = "jpg") -> Path:
    """``root/subfolder`` when it exists (the public archives' layout), else ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    inner = root / subfolder
    return inner if inner.is_dir() else root


def index_by_stem(root: Path, suffix: str = ".jpg") -> dict[str, Path]:
    """Map file stem -> path for every ``suffix`` image anywhere under ``root``.

    Used where ground truth names images without folder or extension; a stem found twice
    is ambiguous and raises.
    """
    index: dict[str, Path] = {}
    for path in list_image_files(root, recursive=True):
        if path.suffix.lower() != suffix:
            continue
        if path.stem in index:
            raise DatasetError(f"{path}: image name {path.stem!r} also found at {index[path.stem]}")
        index[path.stem] = path
    return index
