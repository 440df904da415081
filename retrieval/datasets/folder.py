"""Own data as a folder with one sub-folder per group.

Every image is in the database. In each group with at least two images, the first image in
sorted path order is the query; as for manifests, its positives are the rest of its group
and its own entry is junk. Images in nested folders belong to their top-level group;
images directly in ``ROOT`` are distractors, each in a group of its own.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.datasets.base import DatasetError, RetrievalDataset
from retrieval.datasets.files import list_image_files
from retrieval.datasets.manifest import grouped_queries


def load_folder(root: Path) -> RetrievalDataset:
    """Load a dataset from ``ROOT/<group>/<image>`` (groups with one image give no query)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    paths: list[Path] = list_image_files(root)  # top-level distractors first
    groups: list[int] = list(range(len(paths)))
    is_query: list[bool] = [False] * len(paths)
    next_group = len(paths)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        members = list_image_files(folder, recursive=True)
        if not members:
            raise DatasetError(f"{folder}: group folder holds no images")
        group, next_group = next_group, next_group + 1
        for i, path in enumerate(members):
            paths.append(path)
            groups.append(group)
            is_query.append(i == 0 and len(members) >= 2)
    if not any(is_query):
        raise DatasetError(f"{root}: no sub-folder holds two or more images, so no queries")
    image_ids = [p.relative_to(root).as_posix() for p in paths]
    queries = grouped_queries(paths, image_ids, groups, is_query, lambda i: str(paths[i]))
    return RetrievalDataset(
        name=root.name,
        root=root,
        image_paths=paths,
        image_ids=image_ids,
        queries=queries,
        groups=groups,
        notes={"query_crop": "none", "source": f"folder {root}"},
    )
