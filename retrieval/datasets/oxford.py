"""Oxford5k and Paris6k (original protocol): images plus ``gt_files`` ground-truth lists.

Images are every ``.jpg`` under ``ROOT/jpg`` or ``ROOT`` (searched recursively, so Paris's
per-landmark sub-folders work); ground truth sits in ``ROOT/gt_files`` or ``ROOT``. Each query
``<landmark>_<n>`` has ``_query.txt`` (one line ``[oxc1_]<image> x1 y1 x2 y2``) and
``_good.txt``, ``_ok.txt``, ``_junk.txt``. Positives are good ∪ ok, junk is ignored, the query
image stays in the database, and queries are meant to be cropped to their box.
"""

from __future__ import annotations

import math
from pathlib import Path

from retrieval.datasets.base import BBox, DatasetError, GroundTruth, Query, RetrievalDataset
from retrieval.datasets.files import image_folder, index_by_stem

_GT_FOLDERS = ("gt_files", "gt_files_170407")
_PREFIX = "oxc1_"
_KINDS = ("good", "ok", "junk")


def _gt_folder(root: Path) -> Path:
    for name in _GT_FOLDERS:
        if (root / name).is_dir():
            return root / name
    return root


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank stripped lines with their 1-based line numbers."""
    if not path.is_file():
        raise DatasetError(f"{path}: ground-truth file not found")
    text = path.read_text(encoding="utf-8")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _lookup(name: str, index: dict[str, int], path: Path, line: int) -> int:
    name = name.removeprefix(_PREFIX)
    if name not in index:
        raise DatasetError(f"{path}:{line}: unknown image {name!r}")
    return index[name]


def _parse_query(path: Path, index: dict[str, int]) -> tuple[int, BBox]:
    lines = _lines(path)
    if len(lines) != 1:
        line = lines[1][0] if lines else 1
        raise DatasetError(f"{path}:{line}: expected exactly one line '<image> x1 y1 x2 y2'")
    line, text = lines[0]
    fields = text.split()
    if len(fields) != 5:
        raise DatasetError(f"{path}:{line}: expected '<image> x1 y1 x2 y2', got {text!r}")
    try:
        x1, y1, x2, y2 = (float(v) for v in fields[1:])
    except ValueError:
        raise DatasetError(f"{path}:{line}: box coordinates are not numbers: {text!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{path}:{line}: box needs x1 < x2 and y1 < y2, got {text!r}")
    return _lookup(fields[0], index, path, line), (x1, y1, x2, y2)


def _parse_list(path: Path, index: dict[str, int]) -> frozenset[int]:
    found: set[int] = set()
    for line, text in _lines(path):
        if len(text.split()) != 1:
            raise DatasetError(f"{path}:{line}: expected one image name, got {text!r}")
        found.add(_lookup(text, index, path, line))
    return frozenset(found)


def load_oxford(root: Path, name: str = "oxford5k") -> RetrievalDataset:
    """Load Oxford5k (or, with ``name="paris6k"``, Paris6k, which has the same format)."""
    root = Path(root)
    folder = image_folder(root)
    by_stem = index_by_stem(folder)
    if not by_stem:
        raise DatasetError(f"{folder}: no .jpg images found")
    image_ids = sorted(by_stem)
    paths = [by_stem[i] for i in image_ids]
    index = {image_id: i for i, image_id in enumerate(image_ids)}

    gt = _gt_folder(root)
    query_files = sorted(gt.glob("*_query.txt"))
    if not query_files:
        raise DatasetError(f"{gt}: no *_query.txt ground-truth files found")
    queries: list[Query] = []
    for query_file in query_files:
        query_id = query_file.name.removesuffix("_query.txt")
        image, bbox = _parse_query(query_file, index)
        lists = {kind: _parse_list(gt / f"{query_id}_{kind}.txt", index) for kind in _KINDS}
        positives = lists["good"] | lists["ok"]
        if not positives:
            raise DatasetError(f"{gt / f'{query_id}_good.txt'}: query has no good or ok images")
        queries.append(
            Query(
                name=query_id,
                path=paths[image],
                ground_truth={"default": GroundTruth(positives, lists["junk"])},
                bbox=bbox,
                database_index=image,
            )
        )

    return RetrievalDataset(
        name=name,
        root=root,
        image_paths=paths,
        image_ids=image_ids,
        queries=queries,
        notes={"query_crop": "bbox"},
    )


def load_paris6k(root: Path) -> RetrievalDataset:
    """Load Paris6k (``paris_<landmark>_NNNNNN.jpg``, possibly in per-landmark folders)."""
    return load_oxford(root, name="paris6k")
