"""The training runs behind ``python -m training``: data, fit, save, summary.

Frozen backbone (default): the head trains on cached features. ``--fine-tune``: the same head,
started from the same ITQ solution, trains end to end on images through a private copy of the
backbone; the images are decoded into memory once (fine on a GPU host for thousands of images,
meant for tiny smoke runs on a CPU; ``--max-train-images`` caps them), and the tuned backbone is
saved as ``backbone.weights.h5`` next to the head.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np

from retrieval.backbones import Backbone
from retrieval.baselines import BinaryEncoder
from retrieval.config import data_dir
from retrieval.datasets import DatasetError, load_dataset
from retrieval.datasets.base import RetrievalDataset
from retrieval.hashing import BACKBONE_WEIGHTS_FILE, HashModel, build_hash_head
from retrieval.images import load_for_model
from training.data import (
    TrainingData,
    expanded_dataset,
    image_hashes,
    source_ids,
    training_data,
    write_manifest,
)
from training.train import (
    StepTimer,
    TrainConfig,
    TrainResult,
    fine_tune_embedder,
    init_from_itq,
    leave_one_out_map,
    train_embedder,
    train_hash_head,
    validation_map,
    with_training_record,
)

HELDOUT_MANIFEST = "heldout.csv"
DEFAULT_SIMILARITY_WEIGHT = 0.1
HEAD_LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-4


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
    if getattr(args, "fine_tune", False):
        return run_fine_tuning(args)
    config = _checked_config(args)
    dataset, backbone, data = prepare_data(args)
    train = data.train_mask
    # Positives: the same group, or (--positives source) the views of the same source image.
    labels = data.groups if config.positives == "group" else source_ids(data.paths)
    model_config = _model_config(args, dataset, backbone, data, "frozen backbone, cached features")
    has_val = len(data.val_groups) > 1
    _announce(dataset, data, backbone.cache_key)
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
    summary = _summary(args, config, result)
    if has_val:
        summary["val_map_learned"] = result.reported_val_map(config.keep_last)
        summary |= _heldout_summary(args, data, config)
    return summary


def run_fine_tuning(args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end run: the ITQ-initialised head and a copy of the backbone trained on images."""
    from retrieval.backbones import WeightsNotFoundError, load_backbone, trainable_backbone

    config = _checked_config(args)
    dataset, backbone, data = prepare_data(args)
    train = data.train_mask
    labels = data.groups if config.positives == "group" else source_ids(data.paths)
    has_val = len(data.val_groups) > 1
    _announce(dataset, data, backbone.cache_key)
    # The same start as the frozen mode: the head (ITQ on every training image's cached
    # features) encodes exactly as the frozen solution before the first step.
    head = build_hash_head(backbone.feature_dim, config.bits, config.projection_dim, config.seed)
    if config.init == "itq":
        try:
            init_from_itq(head, data.features[train], seed=config.seed)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
    cap = args.max_train_images or None
    train_rows = capped_rows(np.flatnonzero(train), data.groups, cap, args.seed)
    val_rows = capped_rows(np.flatnonzero(~train), data.groups, cap, args.seed) if has_val else []
    has_val = has_val and len(np.unique(data.groups[val_rows])) > 1
    start = time.perf_counter()
    train_images = decode_images([data.paths[i] for i in train_rows], backbone)
    val_images = decode_images([data.paths[i] for i in val_rows], backbone) if has_val else None
    decode_seconds = time.perf_counter() - start
    if not args.quiet:
        megabytes = (train_images.nbytes + (0 if val_images is None else val_images.nbytes)) / 1e6
        print(
            f"fine-tuning on {len(train_rows)} decoded training images "
            f"({len(val_rows) if has_val else 0} held out), {megabytes:.0f} MB in memory, "
            f"decoded in {decode_seconds:.1f} s",
            file=sys.stderr,
        )
    tuned = trainable_backbone(backbone)
    embedder = fine_tune_embedder(tuned.model, head, freeze_batchnorm=not args.train_batchnorm)
    val_groups = data.groups[val_rows] if has_val else None
    val_map_start = validation_map(embedder, val_images, val_groups) if has_val else None
    timer = StepTimer()
    try:
        result = train_embedder(
            embedder,
            train_images,
            labels[train_rows],
            config,
            val_inputs=val_images,
            val_groups=val_groups,
            out_dir=args.out,
            verbose=0 if args.quiet else 2,
            checkpoint=False,  # the weights kept are saved below; a checkpoint would copy them
            extra_callbacks=[timer],
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    weights_path = _save_backbone_weights(tuned.model, args.out)
    try:
        saved = load_backbone(
            backbone.name,
            pooling=backbone.pooling,
            resize_mode=backbone.resize_mode,
            finetuned=weights_path,
        )
    except WeightsNotFoundError as error:
        raise SystemExit(f"error: the saved backbone does not reload: {error}") from None
    model_config = _model_config(args, dataset, backbone, data, "end-to-end fine-tuning")
    model_config |= {
        "feature_key": saved.cache_key,
        "weights_id": saved.weights_id,
        "backbone_weights": BACKBONE_WEIGHTS_FILE,
    }
    model_config["training"] |= {
        "base_feature_key": backbone.cache_key,
        "base_weights_id": backbone.weights_id,
        "n_fine_tune_images": len(train_rows),
        "n_fine_tune_val_images": len(val_rows) if has_val else 0,
        "max_train_images": cap,
        "freeze_batchnorm": not args.train_batchnorm,
        "seconds_per_step": timer.steady_seconds,
        "first_step_seconds": timer.seconds[0] if timer.seconds else None,
    }
    model = HashModel(head, with_training_record(model_config, config, result))
    model.save(args.out)
    summary = _summary(args, config, result)
    summary |= {
        "mode": "end-to-end fine-tuning",
        "backbone_weights": str(weights_path),
        "feature_key": saved.cache_key,
        "n_fine_tune_images": len(train_rows),
        "steps": len(timer.seconds),
        "seconds_per_step": None
        if timer.steady_seconds is None
        else round(timer.steady_seconds, 3),
        "first_step_seconds": round(timer.seconds[0], 2) if timer.seconds else None,
    }
    if has_val:
        summary["val_map_start"] = val_map_start  # the ITQ-initialised head, before any step
        summary["val_map_images"] = len(val_rows)  # start / learned: on the decoded images
        summary["val_map_learned"] = result.reported_val_map(config.keep_last)
        # Baselines on the ImageNet features (the frozen starting point), as in the frozen mode.
        summary |= _heldout_summary(args, data, config)
    return summary


def capped_rows(rows: np.ndarray, groups: np.ndarray, cap: int | None, seed: int = 0) -> np.ndarray:
    """At most ``cap`` of ``rows``, spread evenly over their groups (seeded choice).

    Every kept group keeps at least two images (positives), so P x K batches still draw from
    as many groups as the cap allows (at most ``cap // 2``).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if cap is None or len(rows) <= cap:
        return rows
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.unique(groups[rows]))[: max(1, cap // 2)]
    members = [rng.permutation(rows[groups[rows] == group]) for group in order]
    kept: list[int] = []
    for depth in range(max(len(m) for m in members)):  # one image per group per round
        for group_rows in members:
            if depth < len(group_rows) and len(kept) < cap:
                kept.append(int(group_rows[depth]))
    return np.sort(np.asarray(kept, dtype=np.int64))


def decode_images(paths: list[str], backbone: Backbone) -> np.ndarray:
    """(N, S, S, 3) uint8 images at the backbone's input size and resize mode."""
    size = backbone.input_size
    images = np.empty((len(paths), size, size, 3), np.uint8)
    for row, path in enumerate(paths):
        images[row] = load_for_model(path, size, backbone.resize_mode)
    return images


def _save_backbone_weights(model: keras.Model, out: Path) -> Path:
    """Write ``backbone.weights.h5`` into ``out`` (through a temporary file)."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / BACKBONE_WEIGHTS_FILE
    temp = out / f".partial-{os.getpid()}.weights.h5"
    try:
        model.save_weights(str(temp))
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def _checked_config(args: argparse.Namespace) -> TrainConfig:
    try:
        return _train_config(args)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def _model_config(
    args: argparse.Namespace,
    dataset: RetrievalDataset,
    backbone: Backbone,
    data: TrainingData,
    mode: str,
) -> dict[str, Any]:
    """The model directory's config: backbone identity and what it was trained on."""
    train = data.train_mask
    train_paths = [p for p, t in zip(data.paths, train, strict=True) if t]
    return {
        "backbone": backbone.name,
        "feature_key": backbone.cache_key,
        "input_size": backbone.input_size,
        "pooling": backbone.pooling,
        "resize_mode": backbone.resize_mode,
        "weights_id": backbone.weights_id,
        "training": {
            "mode": mode,
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


def _announce(dataset: RetrievalDataset, data: TrainingData, feature_key: str) -> None:
    train = data.train_mask
    print(
        f"{dataset.name}: {int(train.sum())} training images in {len(data.train_groups)} groups, "
        f"{int((~train).sum())} held out in {len(data.val_groups)} groups; {feature_key}",
        file=sys.stderr,
    )


def _summary(args: argparse.Namespace, config: TrainConfig, result: TrainResult) -> dict[str, Any]:
    return {
        "model": str(args.out),
        "bits": config.bits,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history.get("loss", [])),
        "train_seconds": round(result.seconds, 2),
        "config": asdict(config),
    }


def _heldout_summary(
    args: argparse.Namespace, data: TrainingData, config: TrainConfig
) -> dict[str, Any]:
    """Write ``heldout.csv``; ITQ's held-out mAP fitted on the held-out and the training images."""
    train = data.train_mask
    val_paths = [p for p, t in zip(data.paths, train, strict=True) if not t]
    held_out, held_groups = data.features[~train], data.groups[~train]
    return {
        "heldout_manifest": str(
            write_manifest(val_paths, held_groups, args.out / HELDOUT_MANIFEST)
        ),
        # ITQ fitted on the held-out images themselves (as `evaluate` does) and on the
        # training images only (what the learned head saw): the same leave-one-out mAP.
        "val_map_itq_fit_heldout": _itq_val_map(held_out, held_out, held_groups, config),
        "val_map_itq_fit_train": _itq_val_map(data.features[train], held_out, held_groups, config),
    }


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The training config from the command line (ValueError on a bad combination)."""
    return TrainConfig(
        bits=args.bits,
        mining=args.mining,
        margin_bits=args.margin_bits,
        quantization_weight=args.quantization_weight,
        balance_weight=args.balance_weight,
        triplet_weight=args.triplet_weight,
        similarity_weight=_similarity_weight(args),
        anchor_weight=args.anchor_weight,
        positives=args.positives,
        projection_dim=args.projection_dim or None,
        epochs=args.epochs,
        p=args.groups_per_batch,
        k=args.images_per_group,
        batches_per_epoch=args.batches_per_epoch,
        learning_rate=_learning_rate(args),
        patience=args.patience,
        keep_last=args.keep_last,
        center_bits=not args.no_center_bits and not getattr(args, "fine_tune", False),
        init=args.init,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )


def _similarity_weight(args: argparse.Namespace) -> float:
    """``--similarity-weight``: default 0.1 on features; refused with images in (fine-tuning)."""
    fine_tune = getattr(args, "fine_tune", False)
    if args.similarity_weight is None:
        return 0.0 if fine_tune else DEFAULT_SIMILARITY_WEIGHT
    if fine_tune and args.similarity_weight > 0:
        raise ValueError(
            "--similarity-weight needs cached features as inputs; with --fine-tune it must be 0"
        )
    return args.similarity_weight


def _learning_rate(args: argparse.Namespace) -> float:
    """``--learning-rate``: default 1e-3 for the head alone, 1e-4 with the backbone unfrozen."""
    if args.learning_rate is not None:
        return args.learning_rate
    return FINE_TUNE_LEARNING_RATE if getattr(args, "fine_tune", False) else HEAD_LEARNING_RATE


def _itq_val_map(
    fit: np.ndarray, features: np.ndarray, groups: np.ndarray, config: TrainConfig
) -> float | None:
    """Leave-one-out held-out mAP of ITQ codes at the same length, fitted on ``fit``."""
    try:
        encoder = BinaryEncoder("itq", config.bits, seed=config.seed).fit(fit)
    except ValueError:
        return None  # fewer images than bits
    return leave_one_out_map(encoder.encode(features).astype(np.int8) * 2 - 1, groups)
