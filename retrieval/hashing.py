"""The learned hash head: float backbone features -> tanh-relaxed codes -> ±1 bits -> packed bytes.

One head (one set of weights) embeds anchors, positives and negatives alike. A trained head is
saved as a *model directory*: ``head.keras`` (Keras 3 native format) and ``config.json`` (backbone
identity, feature key, bits, preprocessing, format version, training config); a model trained
end to end also holds its fine-tuned backbone, ``backbone.weights.h5``, named in the config.
Model code uses ``keras.layers`` / ``keras.ops`` only, so it runs under any Keras backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from retrieval.ranking import pack_bits
from retrieval.storage import atomic_write

BIT_CHOICES = (16, 32, 48, 64, 128, 256)
FORMAT_VERSION = 1
HEAD_FILE = "head.keras"
CONFIG_FILE = "config.json"
BACKBONE_WEIGHTS_FILE = "backbone.weights.h5"


class HashModelError(ValueError):
    """A model directory is missing, of another format version, or does not fit the features."""


def build_hash_head(
    feature_dim: int, bits: int, projection_dim: int | None = None, seed: int = 0
) -> keras.Model:
    """(N, D) features -> L2-normalise (x sqrt D) -> [Dense + ReLU] -> Dense(bits) -> tanh."""
    if bits not in BIT_CHOICES:
        raise ValueError(f"bits must be one of {BIT_CHOICES}, got {bits}")
    inputs = keras.Input((feature_dim,), name="features")
    x = keras.layers.UnitNormalization(axis=-1, name="l2_normalize")(inputs)
    # Unit vectors scaled by sqrt(D): each input about unit variance, so tanh starts unsaturated
    # but not near 0 (where the triplet gradients vanish).
    x = keras.layers.Rescaling(float(np.sqrt(feature_dim)), name="scale")(x)
    if projection_dim:
        init = keras.initializers.GlorotUniform(seed=seed + 1)
        x = keras.layers.Dense(
            projection_dim, activation="relu", kernel_initializer=init, name="projection"
        )(x)
    init = keras.initializers.GlorotUniform(seed=seed)
    x = keras.layers.Dense(bits, kernel_initializer=init, name="hash")(x)
    outputs = keras.layers.Activation("tanh", name="tanh")(x)
    return keras.Model(inputs, outputs, name=f"hash_head_{bits}")


def sign_codes(relaxed: np.ndarray) -> np.ndarray:
    """±1 int8 codes from relaxed values: ``u > 0`` is +1, everything else -1."""
    return np.where(np.asarray(relaxed) > 0, 1, -1).astype(np.int8)


@dataclass
class HashModel:
    """A hash head and the config that says which features it takes."""

    head: keras.Model
    config: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None  # where it was loaded from or saved to

    def backbone_weights(self) -> Path | None:
        """The fine-tuned backbone weights file its config names (None: ImageNet weights)."""
        if not self.config.get("backbone_weights"):
            return None
        if self.directory is None:
            raise HashModelError(
                "the model names fine-tuned backbone weights but was not loaded from a directory"
            )
        return backbone_weights_path(self.directory, self.config)

    @property
    def bits(self) -> int:
        """Code length K."""
        return int(self.head.output.shape[-1])

    @property
    def feature_dim(self) -> int:
        """Dimension D of the backbone features the head takes."""
        return int(self.head.input.shape[-1])

    def relaxed(self, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """(N, K) float32 tanh outputs in (-1, 1)."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise HashModelError(
                f"features of shape {features.shape} do not fit a head for "
                f"{self.feature_dim}-d features"
            )
        if len(features) == 0:
            return np.zeros((0, self.bits), np.float32)
        parts = [
            keras.ops.convert_to_numpy(self.head(features[i : i + batch_size], training=False))
            for i in range(0, len(features), batch_size)
        ]
        return np.concatenate(parts).astype(np.float32)

    def encode(self, features: np.ndarray) -> np.ndarray:
        """(N, K) int8 codes in {-1, +1}."""
        return sign_codes(self.relaxed(features))

    def encode_packed(self, features: np.ndarray) -> np.ndarray:
        """(N, K/8) uint8 packed codes (bit set where the code is +1)."""
        return pack_bits(self.encode(features))

    def fingerprint(self) -> str:
        """Short hash of the head's weight values (not its file, whose zip carries save times)."""
        digest = hashlib.sha256()
        for array in self.head.get_weights():
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return digest.hexdigest()[:12]

    def check_backbone(self, name: str, feature_key: str, feature_dim: int) -> None:
        """Raise HashModelError unless these features are the ones the head was trained on."""
        want = (self.config.get("backbone"), self.config.get("feature_key"), self.feature_dim)
        if (name, feature_key, feature_dim) != want:
            raise HashModelError(
                f"model trained on {want[0]} features ({want[1]}, {want[2]}-d) cannot encode "
                f"{name} features ({feature_key}, {feature_dim}-d); use the backbone, pooling, "
                "resize mode and weights named in its config.json"
                + (
                    f" (fine-tuned: {self.config['backbone_weights']} in its directory)"
                    if self.config.get("backbone_weights")
                    else ""
                )
            )

    def save(self, directory: str | Path) -> Path:
        """Write ``head.keras`` and ``config.json`` into ``directory`` (created; files replaced)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            **self.config,
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "feature_dim": self.feature_dim,
        }
        handle, temp = tempfile.mkstemp(dir=directory, suffix=".keras")
        os.close(handle)
        try:
            self.head.save(temp)
            os.replace(temp, directory / HEAD_FILE)
        finally:
            Path(temp).unlink(missing_ok=True)
        _write_json(directory / CONFIG_FILE, config)
        self.config = config
        self.directory = directory
        return directory


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with atomic_write(path, "w", encoding="utf-8") as stream:
        stream.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def backbone_weights_path(directory: str | Path, config: dict[str, Any]) -> Path | None:
    """``directory``/<config's ``backbone_weights``>, checked to exist; None when not named."""
    name = config.get("backbone_weights")
    if not name:
        return None
    path = Path(directory) / name
    if not path.is_file():
        raise HashModelError(
            f"{directory}: config.json names fine-tuned backbone weights {name!r}, "
            "but the file is missing; copy the whole model directory"
        )
    return path


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a model directory, its format version checked."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise HashModelError(f"{directory}: not a hash model directory (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise HashModelError(f"{path}: not valid JSON ({error})") from None
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise HashModelError(
            f"{path}: model format version {version!r}, this code reads version "
            f"{FORMAT_VERSION}; retrain the model or use a matching release"
        )
    return config


def load_hash_model(
    directory: str | Path,
    *,
    backbone: str | None = None,
    feature_key: str | None = None,
    feature_dim: int | None = None,
) -> HashModel:
    """Load a model directory; the optional backbone name, feature key and dim must match it."""
    config = read_model_config(directory)
    head_path = Path(directory) / HEAD_FILE
    if not head_path.is_file():
        raise HashModelError(f"{directory}: {HEAD_FILE} is missing")
    head = keras.saving.load_model(head_path, compile=False)
    model = HashModel(head, config, Path(directory))
    if model.bits != config.get("bits") or model.feature_dim != config.get("feature_dim"):
        raise HashModelError(
            f"{directory}: head is {model.feature_dim}-d -> {model.bits} bits but config.json "
            f"says {config.get('feature_dim')}-d -> {config.get('bits')} bits"
        )
    if backbone is not None or feature_key is not None or feature_dim is not None:
        model.check_backbone(
            backbone if backbone is not None else config.get("backbone"),
            feature_key if feature_key is not None else config.get("feature_key"),
            feature_dim if feature_dim is not None else model.feature_dim,
        )
    return model


def training_overlap(config: dict[str, Any], dataset_spec: str, paths: list[Any]) -> str | None:
    """Why a dataset counts as the model's training data (same spec, shared images), or None."""
    from retrieval.storage import content_hash

    training = config.get("training", {})
    if training.get("dataset") and training["dataset"].strip() == dataset_spec.strip():
        return f"the model was trained on {dataset_spec!r}"
    trained = set(training.get("train_image_hashes", []))
    if not trained:
        return None
    shared = sum(1 for path in paths if content_hash(path)[:16] in trained)
    if shared:
        return f"{shared} of its {len(paths)} images were training images of the model"
    return None
