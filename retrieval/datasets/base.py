"""The one interface every retrieval dataset loader returns.

A dataset is a database of images plus queries; each query carries, per protocol
(``"default"``, or ``"easy"``/``"medium"``/``"hard"`` for the revisited sets), the
database indices of its positives and of the images to ignore (junk).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

BBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the original image


class DatasetError(ValueError):
    """A dataset on disk is missing files or malformed; the message names file and line."""


@dataclass(frozen=True)
class GroundTruth:
    """Positives and junk of one query under one protocol, as database indices."""

    positives: frozenset[int]
    junk: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Query:
    """One query image, its optional crop box and its ground truth per protocol."""

    name: str
    path: Path
    ground_truth: dict[str, GroundTruth]
    bbox: BBox | None = None
    database_index: int | None = None  # set when the query image is also in the database


@dataclass
class RetrievalDataset:
    """A database of images, its queries and the protocols to report."""

    name: str
    root: Path
    image_paths: list[Path]
    image_ids: list[str]
    queries: list[Query]
    protocols: tuple[str, ...] = ("default",)
    groups: list[int] | None = None  # group id per database image, when the dataset has groups
    notes: dict[str, str] = field(default_factory=dict)  # e.g. query-crop policy

    def __len__(self) -> int:
        return len(self.image_paths)
