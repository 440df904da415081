"""First-run set-up: the demo collection, a demo hash model and its index, built when missing.

This is what ``make run`` (``python -m retrieval demo``) does before starting the app.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from retrieval.config import indexes_dir, models_dir

DEMO_BITS = 64
DEMO_MODEL = "demo64"
DEMO_INDEX = "demo"


@dataclass(frozen=True)
class DemoArtifacts:
    """Where the demo's pieces are."""

    manifest: Path
    model_dir: Path
    index_dir: Path


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_demo_model(out: Path, backbone: str = "efficientnet_lite0") -> Path:
    """Train the demo's hash head (frozen backbone, seconds on a CPU) into ``out``."""
    from training.__main__ import build_parser
    from training.pipeline import run_training

    args = build_parser().parse_args(
        [
            "--dataset",
            "demo",
            "--backbone",
            backbone,
            "--bits",
            str(DEMO_BITS),
            "--val-fraction",
            "0.2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    run_training(args)
    return out


def ensure_demo(*, force: bool = False, backbone: str = "efficientnet_lite0") -> DemoArtifacts:
    """Build whatever of the demo collection, model and index is missing (or all, ``force``)."""
    from retrieval.bundle import BundleError, load_bundle
    from retrieval.datasets.demo import build_demo_collection
    from retrieval.datasets.manifest import load_manifest
    from retrieval.hashing import HashModelError, load_hash_model, read_model_config
    from retrieval.search import build_index

    _say("demo collection: building if missing ...")
    manifest = build_demo_collection(force=force)
    model_dir = models_dir() / DEMO_MODEL
    index_dir = indexes_dir() / DEMO_INDEX

    try:
        if force:
            raise HashModelError("rebuild requested")
        read_model_config(model_dir)
        _say(f"demo model:      {model_dir} (present)")
    except HashModelError:
        _say(f"demo model:      training {DEMO_BITS}-bit head into {model_dir} ...")
        train_demo_model(model_dir, backbone)

    try:
        if force:
            raise BundleError("rebuild requested")
        bundle = load_bundle(index_dir)
        if bundle.model.get("head_sha256") != load_hash_model(model_dir).fingerprint():
            raise BundleError("index built from another model")
        _say(f"demo index:      {index_dir} ({len(bundle)} images, present)")
    except BundleError:
        dataset = load_manifest(manifest)
        _say(f"demo index:      encoding {len(dataset)} images into {index_dir} ...")
        report = build_index(model_dir, dataset.image_paths, index_dir, groups=dataset.groups)
        _say(f"demo index:      {report.added} images indexed in {report.seconds:.1f} s")
    return DemoArtifacts(manifest, model_dir, index_dir)
