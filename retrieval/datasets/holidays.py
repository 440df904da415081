"""INRIA Holidays: ``NNNNNN.jpg`` images in ``ROOT`` or ``ROOT/jpg``, grouped by number // 100.

The image whose number % 100 == 0 queries its group; its positives are the rest of the
group, and the query itself is junk (removed from its own ranking) but stays in the database.
"""

from __future__ import annotations

import re
from pathlib import Path

from retrieval.datasets.base import DatasetError, GroundTruth, Query, RetrievalDataset
from retrieval.datasets.files import image_folder, list_image_files

_NAME = re.compile(r"\d{6}")


def load_holidays(root: Path) -> RetrievalDataset:
    """Load Holidays as stored (some images are sideways unless a rotated copy is used)."""
    root = Path(root)
    folder = image_folder(root)
    paths = list_image_files(folder)
    if not paths:
        raise DatasetError(f"{folder}: no Holidays images (NNNNNN.jpg) found")
    for path in paths:
        if not _NAME.fullmatch(path.stem) or path.suffix.lower() != ".jpg":
            raise DatasetError(f"{path}: not a Holidays image name (expected six digits, .jpg)")
    numbers = [int(p.stem) for p in paths]
    groups = [n // 100 for n in numbers]

    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)

    queries: list[Query] = []
    for group, indices in members.items():
        query_index = next((i for i in indices if numbers[i] % 100 == 0), None)
        if query_index is None:
            raise DatasetError(f"{folder}: group {group} has no query image {group * 100:06d}.jpg")
        positives = frozenset(i for i in indices if i != query_index)
        if not positives:
            raise DatasetError(f"{paths[query_index]}: query has no other image in its group")
        queries.append(
            Query(
                name=paths[query_index].stem,
                path=paths[query_index],
                ground_truth={"default": GroundTruth(positives, frozenset({query_index}))},
                database_index=query_index,
            )
        )

    return RetrievalDataset(
        name="holidays",
        root=root,
        image_paths=paths,
        image_ids=[p.stem for p in paths],
        queries=queries,
        groups=groups,
        notes={
            "query_crop": "none",
            "orientation": "as stored on disk (the original release has sideways images)",
        },
    )
