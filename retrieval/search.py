"""Build index bundles from a hash model and search them: the API the CLI and the app share.

A :class:`Searcher` opens a bundle once (codes, metadata, the hash model inside it, and the
backbone the model was trained on) and answers ``search(image, k)`` with timings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retrieval.backbones import Backbone, load_backbone
from retrieval.bundle import Bundle, add_to_bundle, load_bundle, write_bundle
from retrieval.features import extract_features, inference_for
from retrieval.hashing import HashModel, load_hash_model
from retrieval.images import ImageSource, load_for_model, resize_for_model
from retrieval.index import TIE_BREAK


def backbone_for_model(model: HashModel, weights: str | Path | None = None) -> Backbone:
    """The backbone (name, pooling, resize mode) a hash model was trained on, checked.

    A model trained end to end brings its own backbone weights (``backbone.weights.h5`` in its
    directory, or in the bundle's copy of it); ``weights`` (ImageNet) is then unused.
    """
    config = model.config
    backbone = load_backbone(
        config.get("backbone"),
        weights=weights,
        pooling=config.get("pooling", "avg"),
        resize_mode=config.get("resize_mode", "resize"),
        finetuned=model.backbone_weights(),
    )
    model.check_backbone(backbone.name, backbone.cache_key, backbone.feature_dim)
    return backbone


def _model_reference(model_dir: Path, model: HashModel) -> dict[str, Any]:
    config = model.config
    digest = model.fingerprint()
    return {
        "backbone": config.get("backbone"),
        "feature_key": config.get("feature_key"),
        "bits": model.bits,
        "source_dir": str(model_dir.resolve()),
        "head_sha256": digest,
        "trained_on": config.get("training", {}).get("dataset"),
    }


@dataclass
class IndexReport:
    """What an index build or update did."""

    bundle: Bundle
    added: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    computed: int = 0  # features the backbone computed (the rest came from the cache)
    seconds: float = 0.0


def build_index(
    model_dir: str | Path,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    groups: Sequence[Any] | None = None,
    store_features: bool = True,
    weights: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> IndexReport:
    """Encode images with a hash model and write a bundle (model copied in); bad files skipped.

    Features come from the feature cache when present, so re-indexing a collection only
    computes the new or changed images.
    """
    start = time.perf_counter()
    model_dir = Path(model_dir)
    model = load_hash_model(model_dir)
    backbone = backbone_for_model(model, weights)
    result = extract_features(
        paths, backbone, batch_size=batch_size, progress=progress, description="indexing"
    )
    if not result.paths:
        raise ValueError(f"none of the {len(paths)} images could be read; nothing to index")
    codes = model.encode_packed(result.features)
    kept_groups = [groups[int(i)] for i in result.indices] if groups is not None else None
    bundle = write_bundle(
        out,
        codes,
        model=_model_reference(model_dir, model),
        paths=[str(Path(p).resolve()) for p in result.paths],
        content_hashes=result.content_hashes,
        groups=kept_groups,
        features=result.features if store_features else None,
        model_dir=model_dir,
    )
    return IndexReport(
        bundle, len(result.paths), result.skipped, result.computed, time.perf_counter() - start
    )


def add_images(
    bundle_dir: str | Path,
    paths: Sequence[str | Path],
    *,
    weights: str | Path | None = None,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> IndexReport:
    """Encode more images with the bundle's own model and append them; bad files skipped.

    ``on_progress(done, total)`` reports the images encoded so far (see extract_features).
    """
    start = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    model = _bundle_model(bundle)
    backbone = backbone_for_model(model, weights)
    result = extract_features(
        paths, backbone, progress=progress, description="adding", on_progress=on_progress
    )
    if not result.paths:
        return IndexReport(bundle, 0, result.skipped, 0, time.perf_counter() - start)
    updated = add_to_bundle(
        bundle_dir,
        model.encode_packed(result.features),
        paths=[str(Path(p).resolve()) for p in result.paths],
        content_hashes=result.content_hashes,
        features=result.features if bundle.features is not None else None,
    )
    return IndexReport(
        updated, len(result.paths), result.skipped, result.computed, time.perf_counter() - start
    )


def _bundle_model(bundle: Bundle) -> HashModel:
    model_dir = bundle.model_dir or Path(bundle.model.get("source_dir", ""))
    return load_hash_model(model_dir)


@dataclass(frozen=True)
class SearchHit:
    """One result: its 1-based rank, index id, image path, Hamming distance and metadata."""

    rank: int
    id: int
    path: str
    distance: int
    group: Any = None
    content_hash: str | None = None


@dataclass
class SearchResponse:
    """The hits of one query and where the time went (milliseconds)."""

    hits: list[SearchHit]
    timings_ms: dict[str, float]
    tie_break: str = TIE_BREAK


class Searcher:
    """An index bundle opened once, with its hash model and backbone, ready for queries."""

    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        kind: str = "flat",
        weights: str | Path | None = None,
        verify: bool = True,
    ) -> None:
        self.bundle = load_bundle(bundle_dir, verify=verify)
        self.model = _bundle_model(self.bundle)
        if self.model.bits != self.bundle.bits:
            raise ValueError(
                f"{bundle_dir}: the model makes {self.model.bits}-bit codes, "
                f"the index holds {self.bundle.bits}-bit codes"
            )
        self.backbone = backbone_for_model(self.model, weights)
        self.index = self.bundle.index(kind)
        self._rows = {row["id"]: row for row in self.bundle.metadata}
        self._forward = inference_for(self.backbone)
        # Trace the compiled call now, so the first user query does not pay for it.
        size = self.backbone.input_size
        self.encode(np.zeros((size, size, 3), np.uint8))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def identity(self) -> str:
        """Names this index and model for ratings: bundle folder, bits and model hash."""
        reference = self.bundle.model
        return f"{self.bundle.path.name}:{self.bundle.bits}b:{reference.get('head_sha256', '?')}"

    def encode(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Backbone features (1, D) and packed code (1, K/8) of one preprocessed image."""
        features = self._forward(pixels[None])
        return features, self.model.encode_packed(features)

    def search(
        self,
        image: ImageSource | np.ndarray,
        k: int = 10,
        *,
        rerank: int = 0,
        box: Sequence[float] | None = None,
        name: str | None = None,
    ) -> SearchResponse:
        """Top-k of a query image (path, bytes, stream or RGB array); raises ImageLoadError."""
        start = time.perf_counter()
        size, mode = self.backbone.input_size, self.backbone.resize_mode
        if isinstance(image, np.ndarray):
            pixels = resize_for_model(Image.fromarray(image.astype(np.uint8)), size, mode)
        else:
            pixels = load_for_model(image, size, mode, box=box, name=name)
        decoded = time.perf_counter()
        features, code = self.encode(pixels)
        encoded = time.perf_counter()
        distances, ids = self.index.search(
            code, k, rerank=rerank, query_features=features if rerank else None
        )
        searched = time.perf_counter()
        hits = []
        for distance, identifier in zip(distances[0], ids[0], strict=True):
            if identifier < 0:
                continue
            row = self._rows[int(identifier)]
            hits.append(
                SearchHit(
                    rank=len(hits) + 1,
                    id=int(identifier),
                    path=row["path"],
                    distance=int(distance),
                    group=row.get("group"),
                    content_hash=row.get("content_hash"),
                )
            )
        timings = {
            "decode": 1000 * (decoded - start),
            "encode": 1000 * (encoded - decoded),
            "search": 1000 * (searched - encoded),
            "total": 1000 * (searched - start),
        }
        return SearchResponse(hits, timings)


def response_as_json(response: SearchResponse) -> str:
    """The JSON the search CLI prints with ``--json``."""
    payload = {
        "results": [hit.__dict__ for hit in response.hits],
        "timings_ms": {key: round(value, 3) for key, value in response.timings_ms.items()},
        "tie_break": response.tie_break,
    }
    return json.dumps(payload, indent=2, default=str)
