"""ResNet50 trunk with ImageNet weights from a given file, the Keras cache, or Keras's download."""

from __future__ import annotations

import os
from pathlib import Path

import keras

from retrieval.backbones.layers import CaffePreprocess

WEIGHTS_ENV = "RETRIEVAL_RESNET50_WEIGHTS"
NOTOP_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
INPUT_SIZE = 224
FEATURE_DIM = 2048
LAST_BLOCK = "conv5_block3_out"


class WeightsNotFoundError(RuntimeError):
    """A backbone's pretrained weights are neither given, cached, nor downloadable."""


def keras_cache_weights_path() -> Path:
    """Where Keras caches the no-top ImageNet weights (honours $KERAS_HOME)."""
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return keras_home / "models" / NOTOP_WEIGHTS_FILE


def resolve_resnet50_weights(weights: str | Path | None = None) -> Path | None:
    """The weights file to use: the argument, then $RETRIEVAL_RESNET50_WEIGHTS, then the cache.

    Returns None when none of them is set, meaning "try Keras's standard download".
    """
    for origin, candidate in (("given", weights), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV))):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(f"ResNet50 weights file ({origin}) not found: {path}")
            return path
    cached = keras_cache_weights_path()
    return cached if cached.is_file() else None


def resnet50_weights_available(weights: str | Path | None = None) -> bool:
    """Whether ResNet50 ImageNet weights can be had without the network."""
    try:
        return resolve_resnet50_weights(weights) is not None
    except WeightsNotFoundError:
        return False


def _missing_weights_message(cause: BaseException) -> str:
    return (
        "ResNet50 ImageNet weights are not available and could not be downloaded "
        f"({type(cause).__name__}: {cause}). Give them in one of these ways: "
        f"(1) pass a weights file with --weights PATH (Python: weights=PATH); "
        f"(2) set {WEIGHTS_ENV}=PATH; "
        f"(3) put Keras's file at {keras_cache_weights_path()}; "
        "or use the offline backbone: --backbone efficientnet_lite0."
    )


def build_resnet50_architecture() -> keras.Model:
    """The trunk of build_resnet50_trunk with random weights (no ImageNet file needed)."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="rgb")
    normalised = CaffePreprocess(name="caffe_preprocess")(inputs)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=normalised)
    return keras.Model(inputs, base.output, name="resnet50_trunk")


def build_resnet50_trunk(weights: str | Path | None = None) -> keras.Model:
    """ResNet50 up to its last convolutional block: RGB 0-255 in, (7, 7, 2048) feature map out."""
    path = resolve_resnet50_weights(weights)
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="rgb")
    normalised = CaffePreprocess(name="caffe_preprocess")(inputs)
    try:
        if path is None:
            base = keras.applications.ResNet50(
                include_top=False, weights="imagenet", input_tensor=normalised
            )
            return keras.Model(inputs, base.output, name="resnet50_trunk")
        return keras.Model(inputs, _trunk_from_file(path, normalised), name="resnet50_trunk")
    except WeightsNotFoundError:
        raise
    except Exception as error:
        if path is not None:
            raise WeightsNotFoundError(
                f"cannot load ResNet50 weights from {path}: {error}. Expected Keras's "
                f"{NOTOP_WEIGHTS_FILE} (or the full model's file), or a .weights.h5 file "
                "saved from keras.applications.ResNet50."
            ) from error
        raise WeightsNotFoundError(_missing_weights_message(error)) from error


def _trunk_from_file(path: Path, normalised):
    """Load a no-top weights file; fall back to a with-top file and cut the classifier off."""
    try:
        base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=normalised)
        base.load_weights(str(path))
        return base.output
    except ValueError:
        full = keras.applications.ResNet50(include_top=True, weights=None)
        full.load_weights(str(path))
        trunk = keras.Model(full.input, full.get_layer(LAST_BLOCK).output)
        return trunk(normalised)
