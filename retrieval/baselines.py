"""Unsupervised binary-code baselines on float features: LSH, PCA + sign, PCA + ITQ.

Each encoder is fitted on database features (no labels) and maps features to K bits, so the
learned hashing head can be compared with them at the same code length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retrieval.ranking import l2_normalize

BASELINES = ("lsh", "pca", "itq")


@dataclass
class BinaryEncoder:
    """A linear projection followed by ``sign``: bits = (normalize(x) - mean) @ W > 0."""

    method: str
    bits: int
    seed: int = 0
    itq_iterations: int = 50
    mean: np.ndarray | None = field(default=None, repr=False)
    projection: np.ndarray | None = field(default=None, repr=False)

    def fit(self, features: np.ndarray) -> BinaryEncoder:
        """Learn the centring and projection from (N, D) database features."""
        x = l2_normalize(features).astype(np.float64)
        dim = x.shape[1]
        self.mean = x.mean(axis=0)
        centred = x - self.mean
        rng = np.random.default_rng(self.seed)
        if self.method == "lsh":
            self.projection = rng.standard_normal((dim, self.bits))
        elif self.method in ("pca", "itq"):
            self.projection = _pca_projection(centred, self.bits)
            if self.method == "itq":
                rotation = _itq_rotation(centred @ self.projection, rng, self.itq_iterations)
                self.projection = self.projection @ rotation
        else:
            raise ValueError(f"unknown baseline {self.method!r}; choose from {BASELINES}")
        return self

    def encode(self, features: np.ndarray) -> np.ndarray:
        """(N, K) booleans: the code bits of each feature vector."""
        if self.projection is None or self.mean is None:
            raise RuntimeError("fit the encoder before encoding")
        x = l2_normalize(features).astype(np.float64) - self.mean
        return (x @ self.projection) > 0


def _pca_projection(centred: np.ndarray, bits: int) -> np.ndarray:
    """(D, K) top principal directions; K may not exceed the rank available."""
    # Centring N points leaves rank at most N - 1.
    limit = min(centred.shape[0] - 1, centred.shape[1])
    if bits > limit:
        raise ValueError(
            f"PCA-based codes need bits <= min(images - 1, dimensions) = {limit}, got {bits}"
        )
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:bits].T


def _itq_rotation(projected: np.ndarray, rng: np.random.Generator, iterations: int) -> np.ndarray:
    """Iterative quantisation: the orthogonal R minimising ||sign(VR) - VR|| (alternating)."""
    bits = projected.shape[1]
    rotation, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    for _ in range(iterations):
        codes = np.where(projected @ rotation >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(projected.T @ codes)
        rotation = u @ wt
    return rotation
