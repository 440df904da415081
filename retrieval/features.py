"""Batched feature extraction (tf.data decoding in parallel with the model) and its disk cache.

The cache keys a vector by backbone identity (name, weights, pooling, resize mode, input size)
and by the image file's content hash, so re-running never recomputes a feature and an edited
image is recomputed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from retrieval.backbones import Backbone
from retrieval.config import feature_cache_dir
from retrieval.images import ImageLoadError, ImageSource, load_for_model
from retrieval.storage import atomic_write, content_hash, content_key

Box = Sequence[float]


class FeatureCache:
    """One ``.npy`` file per (backbone key, content hash), written atomically."""

    def __init__(self, backbone_key: str, root: Path | None = None) -> None:
        self.directory = (root or feature_cache_dir()) / backbone_key

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector, or None when missing or unreadable (it is then recomputed)."""
        path = self._path(key)
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put(self, key: str, vector: np.ndarray) -> None:
        """Store a vector: write a temp file beside it, then rename over."""
        with atomic_write(self._path(key)) as stream:
            np.save(stream, np.asarray(vector, dtype=np.float32), allow_pickle=False)


@dataclass
class FeatureResult:
    """Features of the images that could be read, in input order, and the ones skipped."""

    features: np.ndarray  # (N_ok, D) float32
    paths: list[str]
    indices: np.ndarray  # position of each row in the input list
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    computed: int = 0  # how many vectors the model produced (the rest came from the cache)
    content_hashes: list[str] = field(default_factory=list)  # file SHA-256 of each row


def make_inference(backbone: Backbone) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled forward pass: (N, S, S, 3) uint8/float RGB -> (N, D) float32 numpy."""
    import tensorflow as tf

    size = backbone.input_size
    model = backbone.model

    @tf.function(
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], reduce_retracing=True
    )
    def forward(images):
        return model(tf.cast(images, tf.float32), training=False)

    return lambda images: forward(np.asarray(images, dtype=np.uint8)).numpy()


_INFERENCE: dict[int, Callable[[np.ndarray], np.ndarray]] = {}
_INFERENCE_LOCK = threading.Lock()


def inference_for(backbone: Backbone) -> Callable[[np.ndarray], np.ndarray]:
    """The compiled forward pass of a backbone, traced once per process."""
    with _INFERENCE_LOCK:
        key = id(backbone.model)
        if key not in _INFERENCE:
            _INFERENCE[key] = make_inference(backbone)
        return _INFERENCE[key]


def embed_image(source: ImageSource, backbone: Backbone, *, box: Box | None = None) -> np.ndarray:
    """Feature vector (D,) of one image (a path, bytes or stream); raises ImageLoadError."""
    pixels = load_for_model(source, backbone.input_size, backbone.resize_mode, box=box)
    return inference_for(backbone)(pixels[None])[0]


def extract_features(
    paths: Sequence[str | Path],
    backbone: Backbone,
    *,
    boxes: Sequence[Box | None] | None = None,
    batch_size: int = 32,
    cache: FeatureCache | bool | None = True,
    progress: bool = True,
    description: str = "extracting features",
    on_progress: Callable[[int, int], None] | None = None,
) -> FeatureResult:
    """Features of many image files; unreadable files are skipped and listed, never fatal.

    ``cache=True`` uses the default cache under ``data/cache``; ``False``/None disables it.
    ``boxes`` gives an optional crop box per image (e.g. Oxford query boxes).
    ``on_progress(done, total)`` is called after each batch the backbone runs (e.g. for a UI).
    """
    paths = [str(p) for p in paths]
    if boxes is not None and len(boxes) != len(paths):
        raise ValueError(f"{len(boxes)} boxes for {len(paths)} images")
    store = FeatureCache(backbone.cache_key) if cache is True else (cache or None)

    vectors: dict[int, np.ndarray] = {}
    hashes: dict[int, str] = {}
    keys: dict[int, str] = {}
    errors: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            hashes[i] = content_hash(path)
            keys[i] = content_key(hashes[i], boxes[i] if boxes else None)
        except OSError as error:
            errors[i] = f"cannot read file: {error.strerror or error}"
            continue
        hit = store.get(keys[i]) if store is not None else None
        if hit is not None and hit.shape == (backbone.feature_dim,):
            vectors[i] = hit

    todo = [i for i in range(len(paths)) if i not in vectors and i not in errors]
    computed = 0
    if todo:
        bar = tqdm(total=len(todo), desc=description, unit="img", disable=not progress)
        done = 0
        batches = _decoded_batches(paths, todo, boxes, backbone, batch_size, errors)
        for positions, batch, batch_total in batches:
            if len(positions):
                features = inference_for(backbone)(batch)
                for i, vector in zip(positions, features, strict=True):
                    vectors[int(i)] = vector
                    if store is not None:
                        store.put(keys[int(i)], vector)
                computed += len(positions)
            bar.update(batch_total)
            done += batch_total
            if on_progress is not None:
                on_progress(done, len(todo))
        bar.close()

    ok = sorted(vectors)
    features = (
        np.stack([vectors[i] for i in ok]).astype(np.float32)
        if ok
        else np.zeros((0, backbone.feature_dim), np.float32)
    )
    return FeatureResult(
        features=features,
        paths=[paths[i] for i in ok],
        indices=np.asarray(ok, dtype=np.int64),
        skipped=[(paths[i], errors[i]) for i in sorted(errors)],
        computed=computed,
        content_hashes=[hashes[i] for i in ok],
    )


def _decoded_batches(
    paths: list[str],
    todo: list[int],
    boxes: Sequence[Box | None] | None,
    backbone: Backbone,
    batch_size: int,
    errors: dict[int, str],
):
    """Yield (positions of readable images, their uint8 batch, batch size), decoded by tf.data.

    Unreadable images are dropped from their batch and their reason stored in ``errors``.
    """
    import tensorflow as tf

    size, mode = backbone.input_size, backbone.resize_mode

    def decode(position: np.int64) -> tuple[np.ndarray, np.bool_]:
        i = int(position)
        try:
            box = boxes[i] if boxes else None
            return load_for_model(paths[i], size, mode, box=box), np.bool_(True)
        except (ImageLoadError, ValueError) as error:
            errors[i] = str(getattr(error, "reason", error))
            return np.zeros((size, size, 3), np.uint8), np.bool_(False)

    def decode_op(position):
        image, ok = tf.numpy_function(decode, [position], [tf.uint8, tf.bool], stateful=False)
        image.set_shape([size, size, 3])
        ok.set_shape([])
        return position, image, ok

    dataset = (
        tf.data.Dataset.from_tensor_slices(np.asarray(todo, dtype=np.int64))
        .map(decode_op, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(2)
    )
    for positions, images, ok in dataset.as_numpy_iterator():
        yield positions[ok], images[ok], len(positions)
