"""Registry of ImageNet backbones: a name becomes a Keras model from RGB 0-255 to a float vector.

Every backbone takes (N, S, S, 3) float32 RGB in [0, 255] (its own normalisation is inside the
model) and returns (N, D) float32 pooled features, so the extraction pipeline is the same for all.
A fine-tuned backbone is the same architecture with weights from a ``.weights.h5`` file saved
from a ``Backbone.model`` (``load_backbone(..., finetuned=PATH)``); its ``weights_id`` is
``ft-<digest of the file>``, so its features never share a cache key with ImageNet ones.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from retrieval.backbones.layers import POOLINGS, global_pooling
from retrieval.backbones.resnet50 import WeightsNotFoundError, resnet50_weights_available
from retrieval.storage import content_hash

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
    build_architecture: Callable[[], keras.Model]
    weights_file: Callable[[str | Path | None], Path | None]
    input_size: int
    feature_dim: int


def _resnet50_spec() -> _Spec:
    from retrieval.backbones import resnet50

    return _Spec(
        resnet50.build_resnet50_trunk,
        resnet50.build_resnet50_architecture,
        resnet50.resolve_resnet50_weights,
        resnet50.INPUT_SIZE,
        resnet50.FEATURE_DIM,
    )


def _efficientnet_lite0_spec() -> _Spec:
    from retrieval.backbones import efficientnet_lite0 as lite0

    return _Spec(
        lite0.build_efficientnet_lite0_trunk,
        lite0.build_efficientnet_lite0_architecture,
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
    del size, mtime_ns  # part of the cache key only: a rewritten file is hashed again
    return content_hash(path)[:16]


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
    finetuned: str | Path | None = None,
) -> Backbone:
    """Build (once per process and arguments) the named backbone with its ImageNet weights.

    ``finetuned``: a ``.weights.h5`` file saved from a fine-tuned ``Backbone.model`` of this name
    and pooling; it replaces the ImageNet weights (``weights`` is then unused and not needed).
    """
    resolved = resolve_backbone_name(name)
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if finetuned is not None:
        path = Path(finetuned).expanduser().resolve()
        if not path.is_file():
            raise WeightsNotFoundError(f"fine-tuned {resolved} weights file not found: {path}")
        return _load_finetuned(resolved, path, pooling, resize_mode)
    weights_key = str(Path(weights).expanduser().resolve()) if weights else None
    return _load_backbone_cached(resolved, weights_key, pooling, resize_mode)


def _pooled(name: str, trunk: keras.Model, pooling: str) -> keras.Model:
    pooled = global_pooling(pooling)(trunk.output)
    return keras.Model(trunk.input, pooled, name=f"{name}_{pooling}")


@functools.lru_cache(maxsize=8)
def _load_backbone_cached(
    name: str, weights: str | None, pooling: str, resize_mode: str
) -> Backbone:
    spec = _REGISTRY[name]()
    weights_path = spec.weights_file(weights)
    return Backbone(
        name=name,
        model=_pooled(name, spec.build_trunk(weights_path), pooling),
        input_size=spec.input_size,
        feature_dim=spec.feature_dim,
        pooling=pooling,
        resize_mode=resize_mode,
        weights_id=weights_digest(weights_path),
    )


# Fine-tuned backbones by (name, file digest, pooling, resize mode): the same weights reached
# through another path (a bundle's copy of the model directory) reuse the built model.
_FINETUNED: dict[tuple[str, str, str, str], Backbone] = {}
_FINETUNED_LOCK = threading.Lock()
_FINETUNED_MAX = 8


def _load_finetuned(name: str, path: Path, pooling: str, resize_mode: str) -> Backbone:
    key = (name, weights_digest(path), pooling, resize_mode)
    with _FINETUNED_LOCK:
        if key in _FINETUNED:
            return _FINETUNED[key]
        spec = _REGISTRY[name]()
        model = _pooled(name, spec.build_architecture(), pooling)
        load_finetuned_weights(model, path, f"{name} ({pooling} pooling)")
        backbone = Backbone(
            name=name,
            model=model,
            input_size=spec.input_size,
            feature_dim=spec.feature_dim,
            pooling=pooling,
            resize_mode=resize_mode,
            weights_id=f"ft-{key[1]}",
        )
        if len(_FINETUNED) >= _FINETUNED_MAX:
            _FINETUNED.pop(next(iter(_FINETUNED)))
        _FINETUNED[key] = backbone
        return backbone


def load_finetuned_weights(model: keras.Model, path: Path, what: str) -> None:
    """``model.load_weights(path)``, refusing (WeightsNotFoundError) a file of another model."""
    import h5py

    try:
        with h5py.File(path, "r") as stored:
            shapes: list[tuple[int, ...]] = []
            stored.visititems(
                lambda _, item: (
                    shapes.append(tuple(item.shape)) if isinstance(item, h5py.Dataset) else None
                )
            )
    except OSError as error:
        raise WeightsNotFoundError(
            f"{path} is not a Keras .weights.h5 file ({error}); expected the backbone weights "
            f"saved from a fine-tuned {what} Backbone.model"
        ) from None
    expected = sorted(tuple(w.shape) for w in model.weights)
    if sorted(shapes) != expected:
        raise WeightsNotFoundError(
            f"{path} holds {len(shapes)} weight arrays that do not fit the {what} backbone "
            f"({len(expected)} arrays); was it saved from another backbone or pooling?"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a partly skipped load must not pass silently
            model.load_weights(str(path))
    except Exception as error:
        raise WeightsNotFoundError(
            f"cannot load fine-tuned {what} weights from {path}: {error}"
        ) from error


def trainable_backbone(backbone: Backbone) -> Backbone:
    """A private copy of a registry backbone (same architecture, same weights) to train.

    ``load_backbone`` shares one model per process; training that one would silently change
    what every other caller computes under the ImageNet cache key.
    """
    spec = _REGISTRY[backbone.name]()
    model = _pooled(backbone.name, spec.build_architecture(), backbone.pooling)
    model.set_weights(backbone.model.get_weights())
    return dataclasses.replace(backbone, model=model)


__all__ = [
    "BACKBONE_NAMES",
    "DEFAULT_RESIZE_MODE",
    "Backbone",
    "WeightsNotFoundError",
    "default_backbone_name",
    "load_backbone",
    "load_finetuned_weights",
    "resolve_backbone_name",
    "trainable_backbone",
]
