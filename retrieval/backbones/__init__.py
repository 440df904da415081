"""Registry of ImageNet backbones: a name becomes a Keras model from RGB 0-255 to a float vector.

Every backbone takes (N, S, S, 3) float32 RGB in [0, 255] (its own normalisation is inside the
model) and returns (N, D) float32 pooled features, so the extraction pipeline is the same for all.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from retrieval.backbones.layers import POOLINGS, global_pooling
from retrieval.backbones.resnet50 import WeightsNotFoundError, resnet50_weights_available

# Measured on the demo collection (README): whole-image resize keeps what a crop would cut off.
DEFAULT_RESIZE_MODE = "resize"

AUTO = "auto"


@dataclass(frozen=True)
class Backbone:
    """A loaded backbone and everything that identifies the features it produces."""

    name: str
    model: keras.Model
    input_size: int
    feature_dim: int
    pooling: str
    resize_mode: str
    weights_id: str

    @property
    def cache_key(self) -> str:
        """Identifies features: same key, same vector for the same image bytes."""
        return f"{self.name}-{self.pooling}-{self.resize_mode}-{self.input_size}-{self.weights_id}"


@dataclass(frozen=True)
class _Spec:
    build_trunk: Callable[[str | Path | None], keras.Model]
    weights_file: Callable[[str | Path | None], Path | None]
    input_size: int
    feature_dim: int


def _resnet50_spec() -> _Spec:
    from retrieval.backbones import resnet50

    return _Spec(
        resnet50.build_resnet50_trunk,
        resnet50.resolve_resnet50_weights,
        resnet50.INPUT_SIZE,
        resnet50.FEATURE_DIM,
    )


def _efficientnet_lite0_spec() -> _Spec:
    from retrieval.backbones import efficientnet_lite0 as lite0

    return _Spec(
        lite0.build_efficientnet_lite0_trunk,
        lite0.resolve_efficientnet_lite0_weights,
        lite0.INPUT_SIZE,
        lite0.FEATURE_DIM,
    )


_REGISTRY: dict[str, Callable[[], _Spec]] = {
    "resnet50": _resnet50_spec,
    "efficientnet_lite0": _efficientnet_lite0_spec,
}

BACKBONE_NAMES = tuple(_REGISTRY)


def default_backbone_name() -> str:
    """``resnet50`` where its ImageNet weights are on this machine, else ``efficientnet_lite0``."""
    return "resnet50" if resnet50_weights_available() else "efficientnet_lite0"


def resolve_backbone_name(name: str | None) -> str:
    """Map None/``auto`` to the default backbone and check the name is known."""
    if name in (None, AUTO):
        return default_backbone_name()
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    return name


@functools.lru_cache(maxsize=16)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def weights_digest(path: Path | None) -> str:
    """Short content hash of a weights file (``imagenet`` for Keras's own download)."""
    if path is None:
        return "imagenet"
    stat = path.stat()
    return _file_digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


def load_backbone(
    name: str | None = AUTO,
    *,
    weights: str | Path | None = None,
    pooling: str = "avg",
    resize_mode: str = DEFAULT_RESIZE_MODE,
) -> Backbone:
    """Build (once per process and arguments) the named backbone with its ImageNet weights."""
    resolved = resolve_backbone_name(name)
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    weights_key = str(Path(weights).expanduser().resolve()) if weights else None
    return _load_backbone_cached(resolved, weights_key, pooling, resize_mode)


@functools.lru_cache(maxsize=8)
def _load_backbone_cached(
    name: str, weights: str | None, pooling: str, resize_mode: str
) -> Backbone:
    spec = _REGISTRY[name]()
    weights_path = spec.weights_file(weights)
    trunk = spec.build_trunk(weights_path)
    pooled = global_pooling(pooling)(trunk.output)
    model = keras.Model(trunk.input, pooled, name=f"{name}_{pooling}")
    return Backbone(
        name=name,
        model=model,
        input_size=spec.input_size,
        feature_dim=spec.feature_dim,
        pooling=pooling,
        resize_mode=resize_mode,
        weights_id=weights_digest(weights_path),
    )


__all__ = [
    "BACKBONE_NAMES",
    "DEFAULT_RESIZE_MODE",
    "Backbone",
    "WeightsNotFoundError",
    "default_backbone_name",
    "load_backbone",
    "resolve_backbone_name",
]
