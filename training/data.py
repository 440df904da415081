"""Training data for the frozen-backbone mode: expanded collection, cached features, group split.

A collection without groups (or with groups too small for P x K batches) is first expanded to
files with ``expand_dataset``: each image plus augmented views in its own group. The features
of the expanded collection are then extracted once through the feature cache, so every epoch
reads vectors, never images.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.backbones import Backbone
from retrieval.datasets.augment import expand_dataset
from retrieval.datasets.base import RetrievalDataset
from retrieval.datasets.manifest import load_manifest
from retrieval.features import extract_features
from retrieval.storage import atomic_write, content_hash
from training.sampler import split_groups


@dataclass
class TrainingData:
    """Features of the readable images of a dataset, their group, path and split."""

    features: np.ndarray  # (N, D)
    groups: np.ndarray  # (N,) group id per row
    paths: list[str]
    train_groups: np.ndarray
    val_groups: np.ndarray
    skipped: list[tuple[str, str]]

    @property
    def train_mask(self) -> np.ndarray:
        """Rows whose group is a training group."""
        return np.isin(self.groups, self.train_groups)


def dataset_groups(dataset: RetrievalDataset) -> np.ndarray:
    """Group id of every database image (each image its own group when there are none)."""
    if dataset.groups is None:
        return np.arange(len(dataset), dtype=np.int64)
    return np.asarray(dataset.groups, dtype=np.int64)


_VIEW_NAME = re.compile(r"(\d{5,})_.*_(orig|v\d{2,})\.jpg")


def source_ids(paths: list[str]) -> np.ndarray:
    """Source image id of each path of an expanded collection (``NNNNN_<id>_orig|vKK.jpg``: the
    views of one source share ``NNNNN``); any other file is its own source."""
    ids = np.empty(len(paths), dtype=np.int64)
    names: dict[str, int] = {}
    for row, path in enumerate(paths):
        match = _VIEW_NAME.fullmatch(Path(path).name)
        key = f"src{match.group(1)}" if match else f"path{row}"
        ids[row] = names.setdefault(key, len(names))
    return ids


def expanded_dataset(
    dataset: RetrievalDataset, per_image: int, out_dir: Path, seed: int = 0
) -> RetrievalDataset:
    """Write (or rewrite) ``per_image`` augmented views per image and load the result."""
    return load_manifest(expand_dataset(dataset, per_image, out_dir, seed=seed))


def training_data(
    dataset: RetrievalDataset,
    backbone: Backbone,
    *,
    val_fraction: float,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> TrainingData:
    """Extract (or read cached) features of every image and split the groups."""
    result = extract_features(
        dataset.image_paths,
        backbone,
        batch_size=batch_size,
        progress=progress,
        description=f"{dataset.name} features",
    )
    groups = dataset_groups(dataset)[result.indices]
    train_groups, val_groups = split_groups(groups, val_fraction, seed=seed)
    return TrainingData(
        result.features, groups, result.paths, train_groups, val_groups, result.skipped
    )


def write_manifest(paths: list[str], groups: np.ndarray, out: Path) -> Path:
    """A ``path,group,is_query`` CSV (first image of each group of 2+ is its query)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = {g: int(np.sum(groups == g)) for g in np.unique(groups)}
    seen: set[int] = set()
    with atomic_write(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "group", "is_query"))
        for path, group in zip(paths, groups.tolist(), strict=True):
            is_query = int(group not in seen and sizes[group] > 1)
            seen.add(group)
            relative = os.path.relpath(Path(path).resolve(), out.parent.resolve())
            writer.writerow((relative, group, is_query))
    return out


def image_hashes(paths: list[str]) -> list[str]:
    """Short content hashes of image files (what the train-set evaluation check compares)."""
    return [content_hash(p)[:16] for p in paths]
