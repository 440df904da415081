"""Small real objects the tests share: a stand-in backbone, an untrained hash model, photos."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
from PIL import Image
from skimage import data as skdata

from retrieval.backbones import Backbone

PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins")


def tiny_backbone() -> Backbone:
    """A small deterministic convolutional model (32 px in, 8-d out) standing in for a backbone."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    return Backbone("tiny", keras.Model(inputs, outputs), 32, 8, "avg", "center-crop", "test")


def untrained_model_dir(out: Path, bits: int = 32) -> Path:
    """An untrained hash head over EfficientNet-Lite0 features, saved as a model directory."""
    from retrieval.backbones import load_backbone
    from retrieval.hashing import HashModel, build_hash_head

    backbone = load_backbone("efficientnet_lite0")
    config = {
        "backbone": backbone.name,
        "feature_key": backbone.cache_key,
        "input_size": backbone.input_size,
        "pooling": backbone.pooling,
        "resize_mode": backbone.resize_mode,
        "training": {"dataset": "none (untrained test head)"},
    }
    return HashModel(build_hash_head(backbone.feature_dim, bits, seed=3), config).save(out)


def write_photos(folder: Path, names: Sequence[str] = PHOTO_NAMES) -> list[Path]:
    """Real photos from scikit-image as JPEG files (quality 90) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(skdata, name)()).convert("RGB").save(path, quality=90)
        paths.append(path)
    return paths
