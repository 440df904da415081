"""Own data described by a CSV manifest with header ``path,group,is_query``.

Paths are relative to the CSV. Every row is a database image, queries included. A query's
positives are the other images of its group (other queries too) and its own database entry
is junk, so it is removed from its own ranking. A group may hold several queries. Rows
with an empty group are distractors, each given a unique group id. ``is_query`` accepts
1/0, true/false, yes/no (any case) or empty for no.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from retrieval.datasets.base import DatasetError, GroundTruth, Query, RetrievalDataset
from retrieval.datasets.files import IMAGE_EXTENSIONS

_COLUMNS = ("path", "group", "is_query")
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no", ""}


def grouped_queries(
    paths: list[Path],
    image_ids: list[str],
    groups: list[int],
    is_query: list[bool],
    where: Callable[[int], str],
) -> list[Query]:
    """Queries whose positives are the rest of their group and whose own entry is junk.

    ``where(i)`` names image i in error messages (file and line, or path).
    """
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    queries = []
    for index, flag in enumerate(is_query):
        if not flag:
            continue
        positives = frozenset(members[groups[index]]) - {index}
        if not positives:
            raise DatasetError(f"{where(index)}: query's group has no other image")
        queries.append(
            Query(
                name=image_ids[index],
                path=paths[index],
                ground_truth={"default": GroundTruth(positives, frozenset({index}))},
                database_index=index,
            )
        )
    return queries


def _parse_flag(value: str, where: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DatasetError(f"{where}: is_query must be 1/0, true/false or yes/no, got {value!r}")


def load_manifest(csv_path: Path) -> RetrievalDataset:
    """Load a dataset from a ``path,group,is_query`` CSV (header required)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: manifest not found")
    base = csv_path.parent
    paths: list[Path] = []
    image_ids: list[str] = []
    groups: list[int] = []
    flags: list[bool] = []
    lines: list[int] = []
    group_ids: dict[str, int] = {}
    seen: dict[Path, int] = {}
    next_group = 0

    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [name.strip() for name in reader.fieldnames or []]
        if not set(_COLUMNS) <= set(header):
            raise DatasetError(f"{csv_path}:1: header must name the columns {','.join(_COLUMNS)}")
        reader.fieldnames = header
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            if any(row.get(c) is None for c in _COLUMNS):
                raise DatasetError(f"{where}: expected the fields {','.join(_COLUMNS)}")
            name = row["path"].strip()
            if not name:
                raise DatasetError(f"{where}: empty path")
            path = base / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DatasetError(f"{where}: {name!r} does not have an image extension")
            if not path.is_file():
                raise DatasetError(f"{where}: image {name!r} not found at {path}")
            key = path.resolve()
            if key in seen:
                raise DatasetError(f"{where}: {name!r} already listed on line {seen[key]}")
            seen[key] = reader.line_num
            flag = _parse_flag(row["is_query"], where)
            label = row["group"].strip()
            if not label:
                if flag:
                    raise DatasetError(f"{where}: a query needs a group")
                group = next_group
                next_group += 1
            elif label in group_ids:
                group = group_ids[label]
            else:
                group = group_ids[label] = next_group
                next_group += 1
            paths.append(path)
            image_ids.append(Path(name).as_posix())
            groups.append(group)
            flags.append(flag)
            lines.append(reader.line_num)

    if not any(flags):
        raise DatasetError(f"{csv_path}: no row has is_query set")
    queries = grouped_queries(paths, image_ids, groups, flags, lambda i: f"{csv_path}:{lines[i]}")
    return RetrievalDataset(
        name=csv_path.stem,
        root=base,
        image_paths=paths,
        image_ids=image_ids,
        queries=queries,
        groups=groups,
        notes={"query_crop": "none", "source": f"manifest {csv_path}"},
    )
