"""BinaryIndex: exact search equals the numpy reference (ties included), add/remove, HNSW/IVF."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import index as index_module
from retrieval.index import MISSING_DISTANCE, BinaryIndex
from retrieval.ranking import hamming_distances, pack_bits, rank_by_hamming


def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)


def tie_heavy_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """Codes with only 3 bits set among the first 8: distances take a handful of values."""
    bits_array = np.zeros((n, bits), bool)
    bits_array[:, :8] = rng.random((n, 8)) < 0.3
    return pack_bits(bits_array)


def reference(queries: np.ndarray, database: np.ndarray, ids: np.ndarray, k: int):
    order = rank_by_hamming(queries, database)[:, :k]
    distances = np.take_along_axis(hamming_distances(queries, database), order, 1)
    return distances, ids[order]


@pytest.mark.parametrize(
    ("bits", "n", "k", "make"),
    [
        (64, 3000, 10, random_codes),
        (128, 2000, 100, random_codes),
        (8, 1500, 50, random_codes),  # 256 possible codes: every distance ties many times
        (32, 1000, 100, tie_heavy_codes),  # 9 distinct distances over 1000 rows
        (16, 500, 500, tie_heavy_codes),  # k = N: the whole ranking
    ],
)
def test_exact_search_equals_numpy_reference_with_ties(bits, n, k, make):
    rng = np.random.default_rng(bits + n)
    database, queries = make(rng, n, bits), make(rng, 40, bits)
    index = BinaryIndex(bits)
    ids = index.add(database)
    distances, found = index.search(queries, k)
    ref_d, ref_ids = reference(queries, database, ids, k)
    assert distances.dtype == np.int32 and found.dtype == np.int64
    assert distances.shape == found.shape == (40, k)
    np.testing.assert_array_equal(distances, ref_d)
    np.testing.assert_array_equal(found, ref_ids)


def test_ties_keep_insertion_order_even_for_identical_codes():
    codes = np.zeros((300, 8), np.uint8)  # all identical: every distance ties
    index = BinaryIndex(64)
    index.add(codes, ids=np.arange(300)[::-1] * 7)  # ids deliberately not sorted
    distances, ids = index.search(codes[:2], 120)
    np.testing.assert_array_equal(ids[0], np.arange(300)[::-1][:120] * 7)
    assert (distances == 0).all()


def test_k_larger_than_index_pads_with_minus_one():
    rng = np.random.default_rng(0)
    index = BinaryIndex(64)
    index.add(random_codes(rng, 5, 64))
    distances, ids = index.search(random_codes(rng, 3, 64), 8)
    assert (ids[:, 5:] == -1).all() and (distances[:, 5:] == MISSING_DISTANCE).all()
    assert sorted(ids[0, :5].tolist()) == [0, 1, 2, 3, 4]
    empty_d, empty_ids = BinaryIndex(64).search(random_codes(rng, 2, 64), 3)
    assert (empty_ids == -1).all() and (empty_d == MISSING_DISTANCE).all()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_removed_ids_never_returned_and_ids_stable(kind):
    rng = np.random.default_rng(1)
    database = tie_heavy_codes(rng, 800, 64)
    index = BinaryIndex(64, kind, nlist=8, nprobe=8, compact_ratio=0.9)
    ids = index.add(database, ids=np.arange(800) + 1000)
    gone = ids[rng.choice(800, 150, replace=False)]
    assert index.remove(gone) == 150
    assert index.remove(gone) == 0  # already removed
    assert len(index) == 650
    queries = database[:30]
    distances, found = index.search(queries, 200)
    assert not np.isin(found, gone).any()
    keep = ~np.isin(ids, gone)
    ref_d, ref_ids = reference(queries, database[keep], ids[keep], 200)
    if kind == "flat":
        np.testing.assert_array_equal(found, ref_ids)
    if kind == "ivf":  # nprobe = nlist scans every list: exact distances (ties cut anywhere)
        np.testing.assert_array_equal(distances, ref_d)
    # New rows get new ids, never a removed one; the kept rows keep theirs.
    new_ids = index.add(database[:10])
    assert new_ids.min() > ids.max()
    np.testing.assert_array_equal(index.ids, np.concatenate([ids[keep], new_ids]))


def test_flat_remove_then_add_matches_reference_of_remaining_rows():
    rng = np.random.default_rng(2)
    database = random_codes(rng, 1000, 16)
    index = BinaryIndex(16)
    ids = index.add(database[:600])
    index.remove(ids[::3])
    index.add(database[600:], ids=np.arange(5000, 5400))
    all_ids = np.concatenate([ids, np.arange(5000, 5400)])
    keep = ~np.isin(all_ids, ids[::3])
    queries = random_codes(rng, 25, 16)
    distances, found = index.search(queries, 60)
    ref_d, ref_ids = reference(queries, database[keep], all_ids[keep], 60)
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_array_equal(distances, ref_d)


def test_hnsw_compaction_keeps_results():
    rng = np.random.default_rng(3)
    database = random_codes(rng, 400, 32)
    index = BinaryIndex(32, "hnsw", compact_ratio=0.2, ef_search=400)
    ids = index.add(database)
    index.remove(ids[:50])  # 12.5 %: tombstoned only
    assert len(index._codes) == 400
    index.remove(ids[50:120])  # 30 %: graph rebuilt without them
    assert len(index._codes) == 280 and len(index) == 280
    _, found = index.search(database[120:130], 1)
    np.testing.assert_array_equal(found[:, 0], ids[120:130])  # each row finds itself


def test_add_rejects_bad_input():
    index = BinaryIndex(64)
    with pytest.raises(TypeError, match="uint8"):
        index.add(np.zeros((2, 8), np.int32))
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        index.add(np.zeros((2, 4), np.uint8))
    index.add(np.zeros((2, 8), np.uint8), ids=[4, 5])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(np.zeros((1, 8), np.uint8), ids=[5])
    with pytest.raises(ValueError, match="multiple of 8"):
        BinaryIndex(12)


def clustered_codes(rng: np.random.Generator, clusters: int, per: int, bits: int, flip: float):
    centres = rng.random((clusters, bits)) < 0.5
    members = np.repeat(centres, per, axis=0) ^ (rng.random((clusters * per, bits)) < flip)
    return pack_bits(members)


@pytest.mark.parametrize(
    ("kind", "options"),
    [("hnsw", {"ef_search": 64}), ("ivf", {"nlist": 32, "nprobe": 4})],
)
def test_approximate_recall_on_clustered_codes(kind, options):
    rng = np.random.default_rng(4)
    database = clustered_codes(rng, 64, 80, 64, 0.08)  # 5120 codes around 64 centres
    queries = database[rng.choice(len(database), 50, replace=False)]
    k = 20
    exact = BinaryIndex(64)
    exact.add(database)
    approx = BinaryIndex(64, kind, **options)
    approx.add(database)
    exact_d, _ = exact.search(queries, k)
    approx_d, approx_ids = approx.search(queries, k)
    # Recall by distance (ties make id sets ambiguous): found rows within the true k-th distance.
    true_d = hamming_distances(queries, database)
    row_d = np.take_along_axis(true_d, approx_ids, 1)
    np.testing.assert_array_equal(row_d, approx_d)  # reported distances are the real ones
    recall = (approx_d <= exact_d[:, -1:]).mean()
    assert recall >= 0.9, recall
    assert (np.diff(approx_d, axis=1) >= 0).all()  # sorted nearest first


def test_rerank_orders_top_r_by_cosine():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(300, 16)).astype(np.float32)
    codes = pack_bits(features @ rng.normal(size=(16, 32)) > 0)
    index = BinaryIndex(32)
    ids = index.add(codes, ids=np.arange(300) + 10, features=features)
    query_features = features[:4] + 0.1 * rng.normal(size=(4, 16)).astype(np.float32)
    query_codes = pack_bits(query_features @ rng.normal(size=(16, 32)) > 0)
    r, k = 50, 10
    _, top_r = index.search(query_codes, r)
    distances, found = index.search(query_codes, k, rerank=r, query_features=query_features)
    for q in range(4):
        rows = top_r[q] - 10
        unit = features[rows] / np.linalg.norm(features[rows], axis=1, keepdims=True)
        cosine = unit @ (query_features[q] / np.linalg.norm(query_features[q]))
        expected = top_r[q][np.argsort(-cosine, kind="stable")][:k]
        np.testing.assert_array_equal(found[q], expected)
        true_d = hamming_distances(query_codes[q : q + 1], codes)[0]
        np.testing.assert_array_equal(distances[q], true_d[found[q] - 10])
    assert set(found[:, 0]) <= set(ids.tolist())
    with pytest.raises(ValueError, match="query_features"):
        index.search(query_codes, k, rerank=r)


class ReverseTieFlat:
    """A stand-in FAISS flat index that breaks ties the worst way: latest row first."""

    def __init__(self, database: np.ndarray) -> None:
        self.database = database

    def search(self, queries: np.ndarray, k: int):
        distances = hamming_distances(queries, self.database)
        backwards = np.arange(len(self.database))[::-1]
        order = np.argsort(distances[:, backwards], axis=1, kind="stable")[:, :k]
        rows = backwards[order]
        return np.take_along_axis(distances, rows, 1), rows


def test_installed_faiss_keeps_ties_in_id_order():
    # Exact search takes FAISS's result as it is only because this probe passes.
    assert index_module._faiss_ties_are_stable()


def test_exact_search_does_not_rely_on_faiss_tie_order(monkeypatch):
    """Where FAISS gave ties in another order, the index re-sorts and widens the fetch."""
    monkeypatch.setattr(index_module, "_faiss_ties_are_stable", lambda: False)
    rng = np.random.default_rng(6)
    database, queries = tie_heavy_codes(rng, 700, 32), tie_heavy_codes(rng, 30, 32)
    index = BinaryIndex(32)
    ids = index.add(database)
    index._faiss = ReverseTieFlat(database)
    distances, found = index.search(queries, 90)
    ref_d, ref_ids = reference(queries, database, ids, 90)
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_array_equal(distances, ref_d)
