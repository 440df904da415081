"""Exact ranking: packed-code Hamming distances against brute force, stable tie-break, cosine."""

from __future__ import annotations

import numpy as np
import pytest

import retrieval.ranking as ranking
from retrieval.ranking import (
    hamming_distances,
    l2_normalize,
    pack_bits,
    rank_by_cosine,
    rank_by_distance,
    rank_by_hamming,
    unpack_bits,
)

BIT_LENGTHS = (16, 24, 64, 136, 256)


def reference_hamming(query_bits: np.ndarray, database_bits: np.ndarray) -> np.ndarray:
    """Pure-Python Hamming distances between (unpacked) boolean code rows."""
    out = np.zeros((len(query_bits), len(database_bits)), dtype=np.int64)
    for q, a in enumerate(query_bits.tolist()):
        for n, b in enumerate(database_bits.tolist()):
            out[q, n] = sum(x != y for x, y in zip(a, b, strict=True))
    return out


def reference_ranking(distances: np.ndarray) -> np.ndarray:
    """Sort each row by (distance, database index): the documented tie-break."""
    return np.array(
        [sorted(range(len(row)), key=lambda i, row=row: (row[i], i)) for row in distances.tolist()],
        dtype=np.int64,
    ).reshape(distances.shape)


def random_bits(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.random((n, bits)) < 0.5


def tied_bits(rng: np.random.Generator, n: int, bits: int, distinct: int = 4) -> np.ndarray:
    """n codes drawn from only a few distinct codes, so most distances tie."""
    pool = random_bits(rng, distinct, bits)
    return pool[rng.integers(0, distinct, n)]


# --- pack / unpack ----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", BIT_LENGTHS)
def test_pack_unpack_round_trip(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = random_bits(rng, 13, bits)
    packed = pack_bits(codes)
    assert packed.dtype == np.uint8 and packed.shape == (13, bits // 8)
    unpacked = unpack_bits(packed)
    assert unpacked.dtype == bool
    np.testing.assert_array_equal(unpacked, codes)
    np.testing.assert_array_equal(unpack_bits(packed, bits), codes)


def test_pack_accepts_bools_zero_one_and_plus_minus_one() -> None:
    rng = np.random.default_rng(1)
    codes = random_bits(rng, 5, 32)
    expected = pack_bits(codes)
    np.testing.assert_array_equal(pack_bits(codes.astype(np.int8)), expected)
    np.testing.assert_array_equal(pack_bits(np.where(codes, 1.0, -1.0)), expected)


def test_unpack_truncates_to_n_bits() -> None:
    codes = np.array([[1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0]], dtype=bool)
    assert unpack_bits(pack_bits(codes), 5).tolist() == [[True, False, True, True, False]]


@pytest.mark.parametrize("shape", [(3, 12), (3, 1), (2, 7), (16,), (2, 8, 1)])
def test_pack_needs_a_matrix_with_a_multiple_of_8_bits(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_bits(np.zeros(shape, dtype=bool))


# --- Hamming distances ------------------------------------------------------------------------


@pytest.mark.parametrize("bits", BIT_LENGTHS)
def test_hamming_equals_brute_force(bits: int) -> None:
    rng = np.random.default_rng(100 + bits)
    queries, database = random_bits(rng, 7, bits), random_bits(rng, 29, bits)
    distances = hamming_distances(pack_bits(queries), pack_bits(database))
    assert distances.dtype == np.int32 and distances.shape == (7, 29)
    np.testing.assert_array_equal(distances, reference_hamming(queries, database))


def test_hamming_extremes() -> None:
    rng = np.random.default_rng(5)
    codes = random_bits(rng, 6, 64)
    packed = pack_bits(codes)
    distances = hamming_distances(packed, pack_bits(np.vstack([codes, ~codes])))
    np.testing.assert_array_equal(np.diag(distances[:, :6]), 0)  # a code is 0 from itself
    np.testing.assert_array_equal(np.diag(distances[:, 6:]), 64)  # and K from its complement
    np.testing.assert_array_equal(distances[:, :6], distances[:, :6].T)  # symmetric


@pytest.mark.parametrize("chunk_bytes", [1, 7, 40, 10**9])
@pytest.mark.parametrize("bits", [16, 256])
def test_hamming_chunking_gives_the_same_distances(
    monkeypatch: pytest.MonkeyPatch, chunk_bytes: int, bits: int
) -> None:
    rng = np.random.default_rng(chunk_bytes + bits)
    queries, database = random_bits(rng, 11, bits), random_bits(rng, 5, bits)
    expected = reference_hamming(queries, database)
    # 40 bytes with a (5 x 2)- or (5 x 32)-byte database gives 4 or 1 queries per chunk,
    # so the last chunk is partial; 1 and 7 give one query per chunk.
    monkeypatch.setattr(ranking, "_CHUNK_BYTES", chunk_bytes)
    distances = hamming_distances(pack_bits(queries), pack_bits(database))
    np.testing.assert_array_equal(distances, expected)


def test_hamming_empty_and_mismatched_inputs() -> None:
    queries = pack_bits(np.zeros((3, 16), dtype=bool))
    assert hamming_distances(queries, np.zeros((0, 2), np.uint8)).shape == (3, 0)
    assert hamming_distances(np.zeros((0, 2), np.uint8), queries).shape == (0, 3)
    with pytest.raises(ValueError, match="code sizes differ"):
        hamming_distances(queries, pack_bits(np.zeros((3, 32), dtype=bool)))


# --- rankings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", BIT_LENGTHS)
def test_rank_by_hamming_sorts_by_distance_then_index(bits: int) -> None:
    rng = np.random.default_rng(200 + bits)
    queries = random_bits(rng, 6, bits)
    database = np.vstack([random_bits(rng, 20, bits), tied_bits(rng, 60, bits)])
    database = database[rng.permutation(len(database))]
    result = rank_by_hamming(pack_bits(queries), pack_bits(database))
    distances = reference_hamming(queries, database)
    assert len(np.unique(distances)) < distances.size // 4  # the case is full of ties
    np.testing.assert_array_equal(result, reference_ranking(distances))


def test_rank_by_hamming_with_chunking_and_16_bit_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    queries, database = tied_bits(rng, 9, 16, 3), tied_bits(rng, 300, 16, 5)
    monkeypatch.setattr(ranking, "_CHUNK_BYTES", 1000)
    result = rank_by_hamming(pack_bits(queries), pack_bits(database))
    np.testing.assert_array_equal(result, reference_ranking(reference_hamming(queries, database)))


def test_rank_by_distance_is_stable_on_all_equal_rows() -> None:
    result = rank_by_distance(np.zeros((2, 1000), dtype=np.int32))
    np.testing.assert_array_equal(result, np.tile(np.arange(1000), (2, 1)))


def test_rank_by_cosine_hand_made() -> None:
    query = np.array([[1.0, 0.0]])
    # cosines with [1, 0]: 0, 0.707, -1, 0.9988
    database = np.array([[0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [2.0, 0.1]])
    assert rank_by_cosine(query, database).tolist() == [[3, 1, 0, 2]]
    # Cosine ignores the length of either vector.
    assert rank_by_cosine(5 * query, 0.01 * database).tolist() == [[3, 1, 0, 2]]
    assert rank_by_cosine(np.array([[0.0, -2.0]]), database).tolist() == [[2, 3, 1, 0]]


def test_rank_by_cosine_ties_keep_database_order() -> None:
    query = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    database = np.array(
        [
            [0.0, 1.0, 0.0],  # cosine 0
            [4.0, 0.0, 0.0],  # cosine 1
            [0.0, 0.0, 0.0],  # zero vector: stays zero, cosine 0, no nan
            [0.0, 0.0, -3.0],  # cosine 0
            [1.0, 0.0, 0.0],  # cosine 1
            [-1.0, 0.0, 0.0],  # cosine -1
            [0.5, 0.0, 0.0],  # cosine 1
        ],
        dtype=np.float32,
    )
    assert rank_by_cosine(query, database).tolist() == [[1, 4, 6, 0, 2, 3, 5]]
    duplicates = np.tile(database[[5, 0]], (50, 1))  # 100 rows, two tied values
    expected = [*range(1, 100, 2), *range(0, 100, 2)]
    assert rank_by_cosine(query, duplicates).tolist() == [expected]


def test_l2_normalize_unit_rows_and_zero_rows() -> None:
    vectors = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]])
    out = l2_normalize(vectors)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)
