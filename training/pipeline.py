"""The frozen-backbone training run behind ``python -m training``: data, fit, save, summary."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.baselines import BinaryEncoder
from retrieval.config import data_dir
from retrieval.datasets import DatasetError, load_dataset
from retrieval.datasets.base import RetrievalDataset
from training.data import (
    TrainingData,
    expanded_dataset,
    image_hashes,
    source_ids,
    training_data,
    write_manifest,
)
from training.train import TrainConfig, leave_one_out_map, train_hash_head

HELDOUT_MANIFEST = "heldout.csv"


def _expanded(args: argparse.Namespace, dataset: RetrievalDataset) -> RetrievalDataset:
    """The dataset with ``--expand-views`` views per image, reused when already written."""
    out = args.expand_dir or (
        data_dir() / "expanded" / f"{dataset.name}_x{args.expand_views}_seed{args.seed}"
    )
    info = out / "expand.json"
    params = {"source": args.dataset, "per_image": args.expand_views, "seed": args.seed}
    if info.is_file() and json.loads(info.read_text()) == params:
        from retrieval.datasets.manifest import load_manifest

        return load_manifest(out / "manifest.csv")
    expanded = expanded_dataset(dataset, args.expand_views, out, seed=args.seed)
    info.write_text(json.dumps(params) + "\n")
    return expanded


def prepare_data(args: argparse.Namespace) -> tuple[RetrievalDataset, Any, TrainingData]:
    """The (expanded) dataset, the backbone and the split features of ``args``."""
    from retrieval.backbones import WeightsNotFoundError, load_backbone

    try:
        dataset = load_dataset(args.dataset)
    except (DatasetError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    if args.expand_views:
        dataset = _expanded(args, dataset)
    try:
        backbone = load_backbone(
            args.backbone, weights=args.weights, pooling=args.pooling, resize_mode=args.resize_mode
        )
    except WeightsNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    data = training_data(
        dataset,
        backbone,
        val_fraction=args.val_fraction,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    return dataset, backbone, data


def run_training(args: argparse.Namespace) -> dict[str, Any]:
    """Train a head on the training groups of ``args.dataset`` and save it to ``args.out``."""
    try:
        config = _train_config(args)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    dataset, backbone, data = prepare_data(args)
    train = data.train_mask
    # Positives: the same group, or (--positives source) the views of the same source image.
    labels = data.groups if config.positives == "group" else source_ids(data.paths)
    train_paths = [p for p, t in zip(data.paths, train, strict=True) if t]
    model_config = {
        "backbone": backbone.name,
        "feature_key": backbone.cache_key,
        "input_size": backbone.input_size,
        "pooling": backbone.pooling,
        "resize_mode": backbone.resize_mode,
        "weights_id": backbone.weights_id,
        "training": {
            "mode": "frozen backbone, cached features",
            "dataset": args.dataset,
            "dataset_name": dataset.name,
            "dataset_root": str(Path(dataset.root).resolve()),
            "expand_views": args.expand_views,
            "train_groups": data.train_groups.tolist(),
            "val_groups": data.val_groups.tolist(),
            "n_train_images": int(train.sum()),
            "n_val_images": int((~train).sum()),
            "train_image_hashes": image_hashes(train_paths),
        },
    }
    has_val = len(data.val_groups) > 1
    print(
        f"{dataset.name}: {int(train.sum())} training images in {len(data.train_groups)} groups, "
        f"{int((~train).sum())} held out in {len(data.val_groups)} groups; {backbone.cache_key}",
        file=sys.stderr,
    )
    try:
        model, result = train_hash_head(
            data.features[train],
            labels[train],
            config,
            val_features=data.features[~train] if has_val else None,
            val_groups=data.groups[~train] if has_val else None,
            out_dir=args.out,
            model_config=model_config,
            verbose=0 if args.quiet else 2,
        )
    except ValueError as error:  # e.g. --init itq with more bits than images or dimensions
        raise SystemExit(f"error: {error}") from None
    model.save(args.out)
    summary: dict[str, Any] = {
        "model": str(args.out),
        "bits": config.bits,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history.get("loss", [])),
        "train_seconds": round(result.seconds, 2),
        "config": asdict(config),
    }
    if has_val:
        val_paths = [p for p, t in zip(data.paths, train, strict=True) if not t]
        summary["heldout_manifest"] = str(
            write_manifest(val_paths, data.groups[~train], args.out / HELDOUT_MANIFEST)
        )
        summary["val_map_learned"] = (
            result.final_val_map if config.keep_last else result.best_val_map
        )
        held_out, held_groups = data.features[~train], data.groups[~train]
        # ITQ fitted on the held-out images themselves (as `evaluate` does) and on the
        # training images only (what the learned head saw): the same leave-one-out mAP.
        summary["val_map_itq_fit_heldout"] = _itq_val_map(held_out, held_out, held_groups, config)
        summary["val_map_itq_fit_train"] = _itq_val_map(
            data.features[train], held_out, held_groups, config
        )
    return summary


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The training config from the command line (ValueError on a bad combination)."""
    return TrainConfig(
        bits=args.bits,
        mining=args.mining,
        margin_bits=args.margin_bits,
        quantization_weight=args.quantization_weight,
        balance_weight=args.balance_weight,
        triplet_weight=args.triplet_weight,
        similarity_weight=args.similarity_weight,
        anchor_weight=args.anchor_weight,
        positives=args.positives,
        projection_dim=args.projection_dim or None,
        epochs=args.epochs,
        p=args.groups_per_batch,
        k=args.images_per_group,
        batches_per_epoch=args.batches_per_epoch,
        learning_rate=args.learning_rate,
        patience=args.patience,
        keep_last=args.keep_last,
        init=args.init,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )


def _itq_val_map(
    fit: np.ndarray, features: np.ndarray, groups: np.ndarray, config: TrainConfig
) -> float | None:
    """Leave-one-out held-out mAP of ITQ codes at the same length, fitted on ``fit``."""
    try:
        encoder = BinaryEncoder("itq", config.bits, seed=config.seed).fit(fit)
    except ValueError:
        return None  # fewer images than bits
    return leave_one_out_map(encoder.encode(features).astype(np.int8) * 2 - 1, groups)
