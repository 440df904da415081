"""Dataset loaders behind one spec string, e.g. ``holidays:/data/holidays`` or ``demo``."""

from __future__ import annotations

from pathlib import Path

from retrieval.datasets.base import BBox, DatasetError, GroundTruth, Query, RetrievalDataset
from retrieval.datasets.folder import load_folder
from retrieval.datasets.holidays import load_holidays
from retrieval.datasets.manifest import load_manifest
from retrieval.datasets.oxford import load_oxford, load_paris6k
from retrieval.datasets.revisited import load_revisited

__all__ = [
    "DATASET_SPEC_HELP",
    "BBox",
    "DatasetError",
    "GroundTruth",
    "Query",
    "RetrievalDataset",
    "load_dataset",
]

DATASET_SPEC_HELP = """\
dataset spec, one of:
  holidays:ROOT     INRIA Holidays, NNNNNN.jpg in ROOT or ROOT/jpg
  oxford5k:ROOT     Oxford5k, images in ROOT or ROOT/jpg, ground truth in ROOT or ROOT/gt_files
  paris6k:ROOT      Paris6k, same layout as oxford5k (images may be in per-landmark folders)
  roxford5k:ROOT    Revisited Oxford, gnd_roxford5k.pkl in ROOT, images in ROOT or ROOT/jpg
  rparis6k:ROOT     Revisited Paris, gnd_rparis6k.pkl in ROOT, images in ROOT or ROOT/jpg
  manifest:FILE.csv CSV with header path,group,is_query (paths relative to the CSV)
  folder:ROOT       one sub-folder per group; the first image of each group is its query
  demo              the small embedded demo collection"""

_LOADERS = {
    "holidays": load_holidays,
    "oxford5k": lambda root: load_oxford(root, name="oxford5k"),
    "paris6k": load_paris6k,
    "roxford5k": lambda root: load_revisited(root, name="roxford5k"),
    "rparis6k": lambda root: load_revisited(root, name="rparis6k"),
    "manifest": load_manifest,
    "folder": load_folder,
}


def load_dataset(spec: str) -> RetrievalDataset:
    """Load the dataset named by ``KIND:PATH`` (or ``demo``); see :data:`DATASET_SPEC_HELP`."""
    kind, sep, location = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "demo" and not location.strip():
        from retrieval.datasets.demo import load_demo_dataset

        return load_demo_dataset()
    if kind not in _LOADERS or not sep or not location.strip():
        raise DatasetError(f"unrecognised dataset spec {spec!r}\n{DATASET_SPEC_HELP}")
    return _LOADERS[kind](Path(location.strip()).expanduser())
