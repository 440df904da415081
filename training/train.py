"""Training the hash head with ``model.fit``: the model holds the objective, callbacks the rest.

``TripletHashModel`` wraps one embedding network (shared by anchor, positive and negative: the
triplets are mined inside each P x K batch) and computes the objective in ``compute_loss``,
which Keras's own ``train_step`` / ``test_step`` call on every backend (TensorFlow, JAX).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from retrieval.baselines import BinaryEncoder
from retrieval.hashing import HashModel, build_hash_head, sign_codes
from retrieval.metrics import average_precisions, mean_average_precision
from retrieval.ranking import l2_normalize, pack_bits, rank_by_hamming
from training.losses import (
    MINING_MODES,
    anchor_loss,
    centred_cosine_similarities,
    hash_objective,
)
from training.sampler import PKBatches

INITS = ("random", "itq")
POSITIVES = ("group", "source")
LOSS_PARTS = ("loss", "triplet", "quantization", "balance", "similarity", "anchor", "active")


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved in the model's config.json)."""

    bits: int = 64
    mining: str = "batch-hard"
    margin_bits: float = 2.0
    quantization_weight: float = 0.1
    balance_weight: float = 0.1
    triplet_weight: float = 1.0
    similarity_weight: float = 0.0  # code inner products / K vs centred float cosine (all pairs)
    anchor_weight: float = 0.0  # pull of the hash layer's kernel back to its initial weights
    positives: str = "group"  # or "source": views of the same source image are the positives
    projection_dim: int | None = None
    init: str = "random"  # or "itq": hash layer starts as ITQ fitted on the training features
    epochs: int = 30
    p: int = 8
    k: int = 4
    batches_per_epoch: int | None = None
    learning_rate: float = 1e-2
    patience: int = 5
    keep_last: bool = False  # True: no early stopping, last epoch's weights (val mAP only logged)
    val_fraction: float = 0.2
    seed: int = 0
    center_bits: bool = False  # after training: bias shifted so each bit splits training data 50/50

    def __post_init__(self) -> None:
        if self.mining not in MINING_MODES:
            raise ValueError(f"unknown mining {self.mining!r}; choose from {MINING_MODES}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose from {INITS}")
        if self.positives not in POSITIVES:
            raise ValueError(f"unknown positives {self.positives!r}; choose from {POSITIVES}")
        if self.init == "itq" and self.projection_dim:
            raise ValueError("init 'itq' sets the hash layer directly: use no projection")


class TripletHashModel(keras.Model):
    """An embedding network trained with the mined triplet + quantisation + balance objective."""

    def __init__(
        self,
        embedder: keras.Model,
        config: TrainConfig,
        feature_mean: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        """``feature_mean``: the mean unit feature vector that centres the similarity targets
        (needed when ``config.similarity_weight`` > 0; the inputs must then be features)."""
        super().__init__(**kwargs)
        self.embedder = embedder
        self.train_config = config
        if config.similarity_weight > 0 and feature_mean is None:
            raise ValueError("similarity_weight > 0 needs feature inputs and their mean")
        self.feature_mean = None if feature_mean is None else np.asarray(feature_mean, np.float32)
        self.hash_layer = embedder.get_layer("hash") if config.anchor_weight > 0 else None
        self.initial_kernel = (
            None if self.hash_layer is None else np.array(self.hash_layer.get_weights()[0])
        )
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_PARTS}

    def call(self, inputs: Any, training: bool = False) -> Any:
        """Relaxed codes of a batch of inputs (features or images)."""
        return self.embedder(inputs, training=training)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        """The objective of one P x K batch (``y`` = group labels); updates the trackers."""
        c = self.train_config
        targets = None
        if c.similarity_weight > 0:
            targets = centred_cosine_similarities(x, self.feature_mean)
        parts = hash_objective(
            y_pred,
            y,
            mining=c.mining,
            margin_bits=c.margin_bits,
            quantization_weight=c.quantization_weight,
            balance_weight=c.balance_weight,
            triplet_weight=c.triplet_weight,
            similarity_targets=targets,
            similarity_weight=c.similarity_weight,
        )
        if self.hash_layer is not None:
            parts["anchor"] = anchor_loss(self.hash_layer.kernel, self.initial_kernel)
            parts["loss"] = parts["loss"] + c.anchor_weight * parts["anchor"]
        for name, value in parts.items():
            self.trackers[name].update_state(value)
        return parts["loss"]

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """The loss parts, reset by Keras at every epoch."""
        return list(self.trackers.values())


def leave_one_out_map(codes: np.ndarray, groups: np.ndarray) -> float:
    """mAP with every image a query against the rest (Hamming, stable ties, itself junk)."""
    packed = pack_bits(codes)
    rankings = rank_by_hamming(packed, packed)
    groups = np.asarray(groups)
    positives = [set(np.flatnonzero(groups == g).tolist()) - {i} for i, g in enumerate(groups)]
    junk = [{i} for i in range(len(groups))]
    return mean_average_precision(average_precisions(rankings, positives, junk))


class ValidationMAP(keras.callbacks.Callback):
    """After each epoch, encodes held-out groups and adds ``val_map`` to the logs."""

    def __init__(self, inputs: np.ndarray, groups: np.ndarray, embedder: keras.Model) -> None:
        super().__init__()
        self.inputs, self.groups, self.embedder = inputs, np.asarray(groups), embedder

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Compute the held-out mAP of sign codes."""
        if logs is not None:
            logs["val_map"] = validation_map(self.embedder, self.inputs, self.groups)


def validation_map(embedder: keras.Model, inputs: np.ndarray, groups: np.ndarray) -> float:
    """Leave-one-out Hamming mAP of the sign codes of ``inputs`` (features or images)."""
    chunk = 256 if np.ndim(inputs) == 2 else 16  # images: bound the backbone's activations
    relaxed = [
        keras.ops.convert_to_numpy(embedder(inputs[i : i + chunk], training=False))
        for i in range(0, len(inputs), chunk)
    ]
    return leave_one_out_map(sign_codes(np.concatenate(relaxed)), groups)


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the best epoch by a monitored value, saves them, restores at the end."""

    def __init__(self, monitor: str = "val_map", path: Path | None = None) -> None:
        super().__init__()
        self.monitor, self.path = monitor, path
        self.best = -np.inf
        self.best_epoch = -1
        self.weights: list[np.ndarray] | None = None
        self.restore = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Remember (and write) the weights if this epoch is the best so far."""
        value = (logs or {}).get(self.monitor)
        if value is not None and value > self.best:
            self.best, self.best_epoch = float(value), epoch
            self.weights = self.model.get_weights()
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.model.save_weights(self.path)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Put the best weights back into the model."""
        if self.weights is not None and self.restore:
            self.model.set_weights(self.weights)


@dataclass
class TrainResult:
    """The trained embedder, per-epoch history, best epoch and wall time."""

    embedder: keras.Model
    history: dict[str, list[float]]
    best_epoch: int
    best_val_map: float | None
    seconds: float
    centred_val_map: float | None = None  # of the returned model, when its bits were centred

    @property
    def final_val_map(self) -> float | None:
        """Validation mAP after the last epoch run."""
        values = self.history.get("val_map")
        return values[-1] if values else None

    def reported_val_map(self, keep_last: bool) -> float | None:
        """Validation mAP of the model as returned: centred, else the last or the best epoch."""
        if self.centred_val_map is not None:
            return self.centred_val_map
        return self.final_val_map if keep_last else self.best_val_map


def train_embedder(
    embedder: keras.Model,
    train_inputs: np.ndarray,
    train_groups: np.ndarray,
    config: TrainConfig,
    *,
    val_inputs: np.ndarray | None = None,
    val_groups: np.ndarray | None = None,
    out_dir: Path | None = None,
    verbose: int = 2,
    checkpoint: bool = True,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Fit ``embedder`` on P x K batches; early stopping and best weights by validation mAP.

    ``out_dir``: where the CSV log (and, with ``checkpoint``, ``best.weights.h5``) go.
    """
    keras.utils.set_random_seed(config.seed)
    feature_mean = None
    if config.similarity_weight > 0:
        if np.ndim(train_inputs) != 2:
            raise ValueError("similarity_weight > 0 needs feature inputs (frozen backbone)")
        feature_mean = l2_normalize(np.asarray(train_inputs, np.float32)).mean(axis=0)
    model = TripletHashModel(embedder, config, feature_mean)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    batches = PKBatches(
        train_inputs,
        train_groups,
        p=config.p,
        k=config.k,
        batches_per_epoch=config.batches_per_epoch,
        seed=config.seed,
    )
    has_val = val_inputs is not None and val_groups is not None and len(np.unique(val_groups)) > 1
    callbacks: list[keras.callbacks.Callback] = []
    if has_val:
        callbacks.append(ValidationMAP(val_inputs, val_groups, embedder))
    monitor = "val_map" if has_val else "loss"
    best = BestWeights(monitor if has_val else "neg_loss")
    if not has_val:
        callbacks.append(_NegLoss())
    if config.keep_last:
        best.restore = False
    else:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, mode="max" if has_val else "min", patience=config.patience
            )
        )
    callbacks.append(best)
    callbacks.extend(extra_callbacks or [])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        best.path = out_dir / "best.weights.h5" if checkpoint else None
        callbacks.append(keras.callbacks.CSVLogger(str(out_dir / "training_log.csv")))
    start = time.perf_counter()
    history = model.fit(batches, epochs=config.epochs, callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - start
    return TrainResult(
        embedder=embedder,
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        best_epoch=best.best_epoch,
        best_val_map=best.best if has_val else None,
        seconds=seconds,
    )


class _NegLoss(keras.callbacks.Callback):
    """Adds ``neg_loss`` to the logs, so the best-weights keeper can maximise it."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None and "loss" in logs:
            logs["neg_loss"] = -float(logs["loss"])


def train_hash_head(
    train_features: np.ndarray,
    train_groups: np.ndarray,
    config: TrainConfig,
    *,
    val_features: np.ndarray | None = None,
    val_groups: np.ndarray | None = None,
    out_dir: Path | None = None,
    model_config: dict[str, Any] | None = None,
    verbose: int = 2,
) -> tuple[HashModel, TrainResult]:
    """Frozen-backbone mode: train a head on cached features; returns the model and the run."""
    head = build_hash_head(
        train_features.shape[1], config.bits, config.projection_dim, seed=config.seed
    )
    if config.init == "itq":
        init_from_itq(head, train_features, seed=config.seed)
    result = train_embedder(
        head,
        np.asarray(train_features, np.float32),
        np.asarray(train_groups),
        config,
        val_inputs=None if val_features is None else np.asarray(val_features, np.float32),
        val_groups=val_groups,
        out_dir=out_dir,
        verbose=verbose,
    )
    if config.center_bits:
        center_hash_bits(head, train_features)
        if val_features is not None and val_groups is not None:
            codes = HashModel(head).encode(np.asarray(val_features, np.float32))
            result.centred_val_map = leave_one_out_map(codes, np.asarray(val_groups))
    return HashModel(head, with_training_record(model_config or {}, config, result)), result


def center_hash_bits(head: keras.Model, features: np.ndarray, batch_size: int = 1024) -> None:
    """Median thresholding: shift the hash layer's bias so each bit is +1 on exactly half the
    training features (balanced bits carry the most information; sign codes change, tanh order
    within a bit does not)."""
    hash_layer = head.get_layer("hash")
    before_tanh = keras.Model(head.input, hash_layer.output)
    features = np.asarray(features, np.float32)
    z = np.concatenate(
        [
            keras.ops.convert_to_numpy(before_tanh(features[i : i + batch_size]))
            for i in range(0, len(features), batch_size)
        ]
    )
    kernel, bias = hash_layer.get_weights()
    hash_layer.set_weights([kernel, (bias - np.median(z, axis=0)).astype(bias.dtype)])


def with_training_record(
    model_config: dict[str, Any], config: TrainConfig, result: TrainResult
) -> dict[str, Any]:
    """``model_config`` with the run (config, best epoch, val mAP, time) added to ``training``."""
    training = {
        **model_config.get("training", {}),
        "config": asdict(config),
        "best_epoch": result.best_epoch,
        "best_val_map": result.best_val_map,
        "final_val_map": result.final_val_map,
        "centred_val_map": result.centred_val_map,
        "epochs_run": len(result.history.get("loss", [])),
        "seconds": round(result.seconds, 3),
    }
    return {**model_config, "training": training}


def init_from_itq(
    head: keras.Model, features: np.ndarray, seed: int = 0, scale: float = 3.0
) -> None:
    """Set the hash layer to ITQ fitted on ``features``: sign codes equal ITQ's at the start.

    The head sees unit vectors times sqrt(D); ITQ's pre-activations are rescaled to a standard
    deviation of ``scale`` so tanh starts near ±1 without saturating.
    """
    bits = int(head.output.shape[-1])
    try:
        encoder = BinaryEncoder("itq", bits, seed=seed).fit(features)
    except ValueError as error:
        raise ValueError(f"init 'itq': {error}; use init 'random'") from None
    assert encoder.projection is not None and encoder.mean is not None
    projected = (l2_normalize(features) - encoder.mean) @ encoder.projection
    gain = scale / max(float(projected.std()), 1e-6)
    dim = features.shape[1]
    kernel = encoder.projection * gain / np.sqrt(dim)
    bias = -(encoder.mean @ encoder.projection) * gain
    head.get_layer("hash").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


def fine_tune_embedder(
    backbone_model: keras.Model, head: keras.Model, *, freeze_batchnorm: bool = True
) -> keras.Model:
    """End-to-end mode: images -> backbone (trainable) -> the same hash head.

    ``freeze_batchnorm`` keeps batch-norm layers in inference mode with their ImageNet
    statistics: P x K batches are small and far from ImageNet's distribution of images.
    """
    backbone_model.trainable = True
    if freeze_batchnorm:
        for layer in _all_layers(backbone_model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return keras.Model(backbone_model.input, head(backbone_model.output), name="fine_tune")


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, keras.Model):
            layers.extend(_all_layers(layer))
    return layers


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step (the first one includes tracing the step function)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Record the step's time."""
        self.seconds.append(time.perf_counter() - self._start)

    @property
    def steady_seconds(self) -> float | None:
        """Median step time after the first step (None when only one step ran)."""
        return float(np.median(self.seconds[1:])) if len(self.seconds) > 1 else None
