"""Protocol evaluation: rank the whole database per query, score with the public AP, keep records.

A *method* turns float features into what is ranked: ``float`` (cosine, the upper reference),
an unsupervised binary baseline (``lsh``, ``pca``, ``itq``) or ``learned`` (a trained hash head,
``retrieval.hashing.HashModel``), the binary ones ranked by Hamming distance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.backbones import Backbone
from retrieval.baselines import BASELINES, BinaryEncoder
from retrieval.datasets.base import RetrievalDataset
from retrieval.features import extract_features
from retrieval.metrics import average_precisions, mean_average_precision, precision_at_k
from retrieval.ranking import TIE_BREAK, pack_bits, rank_by_cosine, rank_by_hamming

if TYPE_CHECKING:
    from retrieval.hashing import HashModel

METHODS = ("float", *BASELINES)
LEARNED = "learned"
ALL_METHODS = (*METHODS, LEARNED)
PRECISION_KS = (1, 5, 10)
RECORD_VERSION = 1


@dataclass
class DatasetFeatures:
    """Float features of a dataset's database and queries, with what could not be read."""

    database: np.ndarray  # (N_ok, D)
    database_indices: np.ndarray  # dataset index of each database row
    queries: np.ndarray  # (Q_ok, D)
    query_indices: np.ndarray  # position in dataset.queries of each query row
    query_crop: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def dataset_features(
    dataset: RetrievalDataset,
    backbone: Backbone,
    *,
    crop_queries: bool = True,
    batch_size: int = 32,
    progress: bool = True,
) -> DatasetFeatures:
    """Extract (or read from the cache) the database and query features of a dataset."""
    start = time.perf_counter()
    database = extract_features(
        dataset.image_paths,
        backbone,
        batch_size=batch_size,
        progress=progress,
        description=f"{dataset.name} database",
    )
    has_boxes = any(q.bbox is not None for q in dataset.queries)
    boxes = [q.bbox if crop_queries else None for q in dataset.queries]
    queries = extract_features(
        [q.path for q in dataset.queries],
        backbone,
        boxes=boxes if has_boxes and crop_queries else None,
        batch_size=batch_size,
        progress=progress,
        description=f"{dataset.name} queries",
    )
    if not has_boxes:
        crop = "no query boxes in this dataset"
    else:
        crop = "queries cropped to their box" if crop_queries else "full query images"
    return DatasetFeatures(
        database=database.features,
        database_indices=database.indices,
        queries=queries.features,
        query_indices=queries.indices,
        query_crop=crop,
        skipped=list(dict.fromkeys(database.skipped + queries.skipped)),
        seconds=time.perf_counter() - start,
    )


def rank_with_method(
    method: str,
    bits: int | None,
    features: DatasetFeatures,
    seed: int = 0,
    model: HashModel | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Full rankings (dataset indices, best first) of every readable query, and timings.

    ``learned`` needs ``model`` (its bits are the model's).
    """
    timing: dict[str, float] = {}
    start = time.perf_counter()
    if method == "float":
        ranking = rank_by_cosine(features.queries, features.database)
    elif method in (*BASELINES, LEARNED):
        if method == LEARNED:
            if model is None:
                raise ValueError("method 'learned' needs a trained model (--model DIR)")
            encode = model.encode_packed
        else:
            if bits is None:
                raise ValueError(f"method {method!r} needs a number of bits")
            encoder = BinaryEncoder(method, bits, seed=seed).fit(features.database)

            def encode(x: np.ndarray) -> np.ndarray:
                return pack_bits(encoder.encode(x))

        database_codes, query_codes = encode(features.database), encode(features.queries)
        timing["encode_s"] = time.perf_counter() - start
        start = time.perf_counter()
        ranking = rank_by_hamming(query_codes, database_codes)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
    timing["rank_s"] = time.perf_counter() - start
    # Rows of the feature matrix back to dataset indices (unreadable images are never ranked).
    return features.database_indices[ranking], timing


def score_rankings(
    dataset: RetrievalDataset, rankings: np.ndarray, query_indices: np.ndarray
) -> dict[str, dict[str, Any]]:
    """mAP, per-query AP and mean precision@k for each protocol of the dataset."""
    results: dict[str, dict[str, Any]] = {}
    for protocol in dataset.protocols:
        rows, positives, junk, names = [], [], [], []
        for row, q in enumerate(query_indices):
            query = dataset.queries[int(q)]
            truth = query.ground_truth.get(protocol)
            if truth is None or not truth.positives:
                continue  # the protocols skip queries without positives
            rows.append(row)
            positives.append(truth.positives)
            junk.append(truth.junk)
            names.append(query.name)
        if not rows:
            continue
        aps = average_precisions(rankings[rows], positives, junk)
        precision = {
            str(k): float(
                np.mean(
                    [
                        precision_at_k(rankings[r], p, k, j)
                        for r, p, j in zip(rows, positives, junk, strict=True)
                    ]
                )
            )
            for k in PRECISION_KS
        }
        results[protocol] = {
            "map": mean_average_precision(aps),
            "precision_at_k": precision,
            "n_queries": len(rows),
            "per_query_ap": {name: float(ap) for name, ap in zip(names, aps, strict=True)},
        }
    return results


def evaluate_method(
    dataset: RetrievalDataset,
    features: DatasetFeatures,
    backbone: Backbone,
    method: str,
    bits: int | None,
    *,
    dataset_spec: str,
    seed: int = 0,
    model: HashModel | None = None,
    train_eval: bool = False,
) -> dict[str, Any]:
    """One evaluation record: the method's scores on every protocol, and how they were made.

    ``train_eval`` marks a learned model scored on (part of) its own training data.
    """
    if method == LEARNED and model is not None:
        bits = model.bits
    rankings, timing = rank_with_method(method, bits, features, seed=seed, model=model)
    protocols = score_rankings(dataset, rankings, features.query_indices)
    record = {
        "version": RECORD_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": dataset_spec,
        "dataset_name": dataset.name,
        "n_database": len(features.database_indices),
        "n_queries": len(features.query_indices),
        "method": method,
        "bits": None if method == "float" else bits,
        "backbone": backbone.name,
        "feature_key": backbone.cache_key,
        "fit": "database features, no labels" if method in BASELINES else None,
        "seed": seed if method in ("lsh", "itq") else None,
        "tie_break": TIE_BREAK,
        "query_crop": features.query_crop,
        "protocols": protocols,
        "timing": {"features_s": round(features.seconds, 3), **timing},
        "skipped": [f"{path}: {reason}" for path, reason in features.skipped],
    }
    if method == LEARNED and model is not None:
        training = model.config.get("training", {})
        record["fit"] = f"learned head, trained on {training.get('dataset', 'unknown data')}"
        record["model"] = {
            "fingerprint": model.fingerprint(),
            "path": model.config.get("path"),
            "mining": training.get("config", {}).get("mining"),
            "training_dataset": training.get("dataset"),
            "train_groups": len(training.get("train_groups", [])),
        }
        record["train_eval"] = train_eval
    return record


def evaluate_methods(
    dataset: RetrievalDataset,
    features: DatasetFeatures,
    backbone: Backbone,
    methods: Sequence[str],
    bits: Sequence[int],
    *,
    dataset_spec: str,
    seed: int = 0,
    model: HashModel | None = None,
    train_eval: bool = False,
) -> list[dict[str, Any]]:
    """Records for every method at every code length (``float`` once, it has no bits;
    ``learned`` once, at the model's bits)."""
    records = []
    for method in methods:
        if method == "float":
            lengths: Sequence[int | None] = [None]
        elif method == LEARNED:
            lengths = [model.bits if model is not None else None]
        else:
            lengths = bits
        for k in lengths:
            records.append(
                evaluate_method(
                    dataset,
                    features,
                    backbone,
                    method,
                    k,
                    dataset_spec=dataset_spec,
                    seed=seed,
                    model=model,
                    train_eval=train_eval,
                )
            )
    return records


def comparison_table(records: Sequence[dict[str, Any]], protocol: str) -> str:
    """Markdown table of mAP (%), methods as rows and code lengths as columns."""
    bit_columns: list[int | None] = sorted({r["bits"] for r in records if r["bits"] is not None})
    if not bit_columns:
        bit_columns = [None]  # float alone: one mAP column
    header = "| method | " + " | ".join("mAP" if b is None else f"{b} bits" for b in bit_columns)
    header += " |"
    lines = [header, "|---|" + "---:|" * len(bit_columns)]
    methods = list(dict.fromkeys(r["method"] for r in records))
    for method in methods:
        cells = []
        for b in bit_columns:
            match = [
                r
                for r in records
                if r["method"] == method and (r["bits"] == b or r["bits"] is None)
            ]
            scores = match[0]["protocols"].get(protocol) if match else None
            cells.append(f"{100 * scores['map']:.2f}" if scores else "-")
        label = f"{method} (cosine, {records[0]['backbone']})" if method == "float" else method
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
