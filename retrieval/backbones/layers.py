"""Small Keras layers shared by the backbones: input normalisation and global pooling.

Written with ``keras.ops`` only, so they run on any Keras backend.
"""

from __future__ import annotations

import keras
from keras import ops

# ImageNet channel means in BGR order, as the original Caffe ResNet50 expects.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="retrieval")
class CaffePreprocess(keras.layers.Layer):
    """RGB 0-255 to Caffe's BGR mean-subtracted input (keras.applications' ResNet50 mode)."""

    def call(self, inputs):
        bgr = ops.flip(inputs, axis=-1)
        return bgr - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=inputs.dtype)


@keras.saving.register_keras_serializable(package="retrieval")
class ScaleOffset(keras.layers.Layer):
    """Affine input normalisation ``(x - offset) / scale``, e.g. (x - 127) / 128."""

    def __init__(self, offset: float, scale: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.offset = float(offset)
        self.scale = float(scale)

    def call(self, inputs):
        return (inputs - self.offset) / self.scale

    def get_config(self) -> dict:
        return {**super().get_config(), "offset": self.offset, "scale": self.scale}


@keras.saving.register_keras_serializable(package="retrieval")
class GeneralizedMeanPooling(keras.layers.Layer):
    """GeM pooling: (mean over positions of x^p)^(1/p); p=1 is average, p→∞ is max pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(**kwargs)
        self.p = float(p)
        self.eps = float(eps)

    def call(self, inputs):
        clipped = ops.maximum(inputs, self.eps)
        pooled = ops.mean(ops.power(clipped, self.p), axis=(1, 2))
        return ops.power(pooled, 1.0 / self.p)

    def get_config(self) -> dict:
        return {**super().get_config(), "p": self.p, "eps": self.eps}


POOLINGS = ("avg", "gem", "max")


def global_pooling(name: str) -> keras.layers.Layer:
    """The pooling layer for a name in POOLINGS."""
    if name == "avg":
        return keras.layers.GlobalAveragePooling2D(name="pool_avg")
    if name == "max":
        return keras.layers.GlobalMaxPooling2D(name="pool_max")
    if name == "gem":
        return GeneralizedMeanPooling(name="pool_gem")
    raise ValueError(f"unknown pooling {name!r}; choose one of {', '.join(POOLINGS)}")
