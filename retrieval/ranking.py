"""Exact ranking of a whole database, vectorised: cosine on floats, Hamming on packed codes.

Tie-break rule, the same everywhere: equal scores keep database order (a stable sort), so a
ranking is reproducible and AP never depends on the sort implementation.
"""

from __future__ import annotations

import numpy as np

TIE_BREAK = "stable: equal distances ordered by database index"

# Bound the (queries x database x bytes) XOR temporary to about this many bytes.
_CHUNK_BYTES = 64 * 1024 * 1024


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, eps)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N, K) booleans (or 0/1, or ±1 with >0 meaning 1) to (N, K/8) uint8; K a multiple of 8."""
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.shape[1] % 8:
        raise ValueError(f"codes must be (N, K) with K a multiple of 8, got {bits.shape}")
    return np.packbits(bits > 0, axis=1)


def unpack_bits(codes: np.ndarray, n_bits: int | None = None) -> np.ndarray:
    """(N, K/8) uint8 back to (N, K) booleans."""
    bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1).astype(bool)
    return bits if n_bits is None else bits[:, :n_bits]


def hamming_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(Q, N) int32 Hamming distances between packed uint8 codes (XOR + popcount)."""
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    database = np.ascontiguousarray(database, dtype=np.uint8)
    if queries.shape[1:] != database.shape[1:]:
        raise ValueError(f"code sizes differ: {queries.shape[1]} vs {database.shape[1]} bytes")
    out = np.empty((len(queries), len(database)), dtype=np.int32)
    step = max(1, _CHUNK_BYTES // max(1, database.size))
    for start in range(0, len(queries), step):
        xor = np.bitwise_xor(queries[start : start + step, None, :], database[None, :, :])
        out[start : start + step] = np.bitwise_count(xor).sum(axis=2, dtype=np.int32)
    return out


def rank_by_distance(distances: np.ndarray) -> np.ndarray:
    """Database indices per query, nearest first, ties in database order."""
    return np.argsort(distances, axis=1, kind="stable")


def rank_by_hamming(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Full rankings of packed-code queries against a packed-code database."""
    return rank_by_distance(hamming_distances(queries, database))


def rank_by_cosine(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Full rankings by cosine similarity of float vectors, most similar first."""
    similarity = l2_normalize(queries) @ l2_normalize(database).T
    return rank_by_distance(-similarity)
