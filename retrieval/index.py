"""Binary-code index over packed uint8 codes: FAISS's binary indexes behind a FAISS-sized API.

``BinaryIndex(bits, kind)``: ``add(codes, ids) -> ids``, ``remove(ids)``, ``search(q, k)``.
``kind="flat"`` (default) is exact and ranks exactly like ``retrieval.ranking.rank_by_hamming``:
ties are ordered by insertion order (database order), whatever order FAISS returns them in.
``"hnsw"`` and ``"ivf"`` are approximate (``IndexBinaryHNSW`` / ``IndexBinaryIVF``); the
candidates they return are ordered by the same rule.

Ids are int64 chosen by the caller (or assigned sequentially, never reused) and stay stable
across removals. Removal is immediate for flat and IVF (FAISS ``remove_ids``, order kept); HNSW
cannot remove, so removed rows are tombstoned (filtered inside the graph search by an id
selector) and the graph is rebuilt once tombstones exceed ``compact_ratio`` of the rows.

Optional re-ranking: codes added with float ``features`` can be searched with ``rerank=R`` and
``query_features``: the top R by Hamming are re-ordered by cosine similarity (highest first,
equal cosines keep their Hamming order) and the first k returned.
"""

from __future__ import annotations

import contextlib
import functools
import math

import faiss
import numpy as np

from retrieval.ranking import l2_normalize, rank_by_hamming

KINDS = ("flat", "hnsw", "ivf")
TIE_BREAK = "stable: equal distances ordered by insertion (database) order"
RERANK_ORDER = "cosine on float features, highest first; equal cosines keep Hamming order"
MISSING_DISTANCE = np.iinfo(np.int32).max  # distance reported beside the id -1 padding

# Queries per FAISS call in exact search, bounding the (queries x candidates) buffers.
_QUERY_BLOCK = 1024
_CANDIDATES = 1 << 22  # at most this many (query, candidate) pairs per FAISS call
# Below this many (query, code) pairs FAISS runs on one thread: waking OpenMP threads costs
# more than a small search, and beside TensorFlow's thread pool it costs milliseconds
# (measured 7 ms vs 0.2 ms for one query on the 189-image demo right after a backbone call).
_SINGLE_THREAD_PAIRS = 1 << 18


@functools.cache
def _faiss_ties_are_stable() -> bool:
    """Probe, once per process, whether FAISS's flat search keeps the lowest ids among equal
    distances (its heaps compare ids on ties). If so, exact search needs no widened fetch."""
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, (12, 8), dtype=np.uint8)  # few codes: ties everywhere
    database = patterns[rng.integers(0, len(patterns), 70_000)]
    queries = np.concatenate([patterns[:3], rng.integers(0, 256, (3, 8), dtype=np.uint8)])
    index = faiss.IndexBinaryFlat(64)
    index.add(database)
    reference = rank_by_hamming(queries, database)
    for k in (1, 10, 100, 1000, 9000):
        _, labels = index.search(queries, k)
        if not np.array_equal(labels, reference[:, :k]):
            return False
    return True


@contextlib.contextmanager
def _faiss_threads(pairs: int):
    """Run FAISS single-threaded for small searches, restoring the setting after."""
    if pairs >= _SINGLE_THREAD_PAIRS:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class BinaryIndex:
    """Hamming top-k over packed codes with stable ties, add/remove by id, optional re-rank."""

    def __init__(
        self,
        bits: int,
        kind: str = "flat",
        *,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 128,
        nlist: int | None = None,
        nprobe: int = 16,
        train_per_list: int = 64,
        compact_ratio: float = 0.25,
    ) -> None:
        """``bits`` a positive multiple of 8; HNSW/IVF options are FAISS's. IVF trains on the
        first ``add``: ``nlist`` defaults to sqrt(N), k-means on <= ``train_per_list`` x nlist."""
        if bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.bits = bits
        self.kind = kind
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.nlist = nlist
        self.nprobe = nprobe
        self.train_per_list = train_per_list
        self.compact_ratio = compact_ratio
        nbytes = bits // 8
        # Rows in insertion order: ids and liveness always; codes only where FAISS's copy cannot
        # serve (HNSW rebuilds, IVF), insertion sequence numbers only for IVF's labels. Flat
        # indexes thus hold K/8 bytes of codes (in FAISS) + 9 bytes of id and flag per image.
        self._codes = np.zeros((0, nbytes), np.uint8)
        self._ids = np.zeros(0, np.int64)
        self._seq = np.zeros(0, np.int64)
        self._alive = np.zeros(0, bool)
        self._features: np.ndarray | None = None  # unit-length float32 rows, or None
        self._next_id = 0
        self._next_seq = 0
        self._faiss = self._new_faiss()

    # ----------------------------------------------------------------------------- public

    def __len__(self) -> int:
        return int(self._alive.sum())

    @property
    def ids(self) -> np.ndarray:
        """Ids of the live rows, in insertion order."""
        return self._ids[self._alive].copy()

    @property
    def codes(self) -> np.ndarray:
        """Packed codes of the live rows, in insertion order."""
        if self.kind == "flat":  # FAISS holds the only copy; removal there is immediate
            return faiss.vector_to_array(self._faiss.xb).reshape(-1, self.bits // 8)
        return self._codes[self._alive].copy()

    @property
    def has_features(self) -> bool:
        """Whether float features were added (needed by ``rerank``)."""
        return self._features is not None

    def add(
        self, codes: np.ndarray, ids: np.ndarray | None = None, features: np.ndarray | None = None
    ) -> np.ndarray:
        """Append (N, bits/8) uint8 codes; returns their int64 ids (new sequential ids if None).

        ``features`` (N, D) floats enable re-ranking; give them with every add or never.
        """
        codes = self._check_codes(codes, "codes")
        n = len(codes)
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            ids = np.asarray(ids).astype(np.int64, casting="safe").reshape(-1)
            if len(ids) != n:
                raise ValueError(f"{len(ids)} ids for {n} codes")
            if len(np.unique(ids)) != n:
                raise ValueError("ids must be unique")
            clash = ids[np.isin(ids, self._ids[self._alive])]
            if len(clash):
                raise ValueError(f"ids already in the index: {clash[:5].tolist()}")
        if features is not None:
            features = l2_normalize(np.asarray(features, dtype=np.float32))
            if features.ndim != 2 or len(features) != n:
                raise ValueError(f"features must be (N={n}, D), got {features.shape}")
            if self._features is not None and features.shape[1] != self._features.shape[1]:
                raise ValueError(
                    f"feature size {features.shape[1]} != index's {self._features.shape[1]}"
                )
        if len(self._ids) and (features is None) != (self._features is None):
            raise ValueError("give features with every add or with none")
        if n == 0:
            return ids

        seq = np.arange(self._next_seq, self._next_seq + n, dtype=np.int64)
        if self.kind == "ivf":
            if not self._faiss.is_trained:
                self._train_ivf(codes)
            self._faiss.add_with_ids(codes, seq)
        else:
            self._faiss.add(codes)
        if self.kind != "flat":
            self._codes = np.concatenate([self._codes, codes])
        if self.kind == "ivf":
            self._seq = np.concatenate([self._seq, seq])
        self._ids = np.concatenate([self._ids, ids])
        self._alive = np.concatenate([self._alive, np.ones(n, bool)])
        if features is not None:
            base = self._features if self._features is not None else features[:0]
            self._features = np.concatenate([base, features])
        self._next_seq += n
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        return ids

    def remove(self, ids: np.ndarray) -> int:
        """Remove rows by id (unknown ids are ignored); returns how many were removed."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        hit = np.isin(self._ids, ids) & self._alive
        count = int(hit.sum())
        if count == 0:
            return 0
        if self.kind == "hnsw":  # graph cannot drop nodes: tombstone, rebuild when many
            self._alive[hit] = False
            if (~self._alive).sum() > self.compact_ratio * len(self._alive):
                self.compact()
            return count
        # FAISS labels: row positions for flat (removal keeps order), sequence numbers for IVF.
        labels = np.flatnonzero(hit).astype(np.int64) if self.kind == "flat" else self._seq[hit]
        removed = self._faiss.remove_ids(faiss.IDSelectorBatch(labels))
        if removed != count:  # pragma: no cover - would mean mirror and FAISS disagree
            raise RuntimeError(f"FAISS removed {removed} rows, expected {count}")
        self._keep(~hit)
        return count

    def compact(self) -> None:
        """Drop tombstoned rows for good (rebuilds the HNSW graph; a no-op otherwise)."""
        if self._alive.all():
            return
        self._keep(self._alive.copy())
        self._faiss = self._new_faiss()
        if len(self._codes):
            self._faiss.add(self._codes)

    def search(
        self,
        query_codes: np.ndarray,
        k: int,
        *,
        rerank: int = 0,
        query_features: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) int32 Hamming distances and int64 ids, nearest first, ties in insertion order.

        Missing results (k > len) are id -1, distance ``MISSING_DISTANCE``. With ``rerank=R``
        the top max(R, k) are re-ordered by cosine (``RERANK_ORDER``); distances stay Hamming.
        """
        queries = self._check_codes(query_codes, "query codes")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        depth = max(k, rerank) if rerank else k
        with _faiss_threads(len(queries) * len(self._ids)):
            distances, positions = self._search_positions(queries, depth)
        if rerank:
            positions, distances = self._rerank(positions, distances, query_features)
        positions, distances = positions[:, :k], distances[:, :k]
        found = positions >= 0
        ids = np.full(positions.shape, -1, np.int64)
        ids[found] = self._ids[positions[found]]
        distances = np.where(found, distances, MISSING_DISTANCE).astype(np.int32)
        return distances, ids.astype(np.int64)

    def memory_bytes(self) -> int:
        """Bytes held: the FAISS index (as serialised) plus this wrapper's mirror arrays."""
        faiss_bytes = len(faiss.serialize_index_binary(self._faiss))
        mirror = self._codes.nbytes + self._ids.nbytes + self._seq.nbytes + self._alive.nbytes
        features = self._features.nbytes if self._features is not None else 0
        return faiss_bytes + mirror + features

    # ---------------------------------------------------------------------------- private

    def _check_codes(self, codes: np.ndarray, what: str) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.dtype != np.uint8:
            raise TypeError(
                f"{what} must be packed uint8 (see ranking.pack_bits), got {codes.dtype}"
            )
        if codes.ndim != 2 or codes.shape[1] != self.bits // 8:
            raise ValueError(
                f"{what} must be (N, {self.bits // 8}) for {self.bits} bits, got {codes.shape}"
            )
        return np.ascontiguousarray(codes)

    def _new_faiss(self) -> faiss.IndexBinary:
        if self.kind == "flat":
            return faiss.IndexBinaryFlat(self.bits)
        if self.kind == "hnsw":
            index = faiss.IndexBinaryHNSW(self.bits, self.hnsw_m)
            index.hnsw.efConstruction = self.ef_construction
            return index
        self._quantizer = faiss.IndexBinaryFlat(self.bits)  # must outlive the IVF index
        return faiss.IndexBinaryIVF(self._quantizer, self.bits, 1)  # real nlist set at training

    def _train_ivf(self, codes: np.ndarray) -> None:
        nlist = self.nlist or max(1, round(math.sqrt(len(codes))))
        nlist = max(1, min(nlist, len(codes)))
        sample = min(len(codes), self.train_per_list * nlist)
        if sample < len(codes):  # k-means cost grows with points x lists: subsample
            rows = np.random.default_rng(0).choice(len(codes), sample, replace=False)
            codes = codes[np.sort(rows)]
        self._quantizer = faiss.IndexBinaryFlat(self.bits)
        self._faiss = faiss.IndexBinaryIVF(self._quantizer, self.bits, nlist)
        self._faiss.cp.min_points_per_centroid = 1  # small collections: no warning spam
        self._faiss.train(codes)
        self.nlist = nlist

    def _keep(self, mask: np.ndarray) -> None:
        if self.kind != "flat":
            self._codes = self._codes[mask]
        if self.kind == "ivf":
            self._seq = self._seq[mask]
        self._ids = self._ids[mask]
        self._alive = self._alive[mask]
        if self._features is not None:
            self._features = self._features[mask]

    def _labels_to_positions(self, labels: np.ndarray) -> np.ndarray:
        if self.kind != "ivf":
            return labels
        positions = np.searchsorted(self._seq, np.maximum(labels, 0))
        return np.where(labels >= 0, positions, -1)

    def _search_positions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) distances and mirror row positions (-1 when missing), ties by position."""
        out_d = np.full((len(queries), k), MISSING_DISTANCE, np.int64)
        out_p = np.full((len(queries), k), -1, np.int64)
        live = len(self)
        if live == 0 or len(queries) == 0:
            return out_d, out_p
        k_live = min(k, live)
        for start in range(0, len(queries), _QUERY_BLOCK):
            block = queries[start : start + _QUERY_BLOCK]
            if self.kind == "flat":
                d, p = self._exact_block(block, k_live)
            else:
                d, p = self._approximate_block(block, k_live)
            out_d[start : start + len(block), : d.shape[1]] = d
            out_p[start : start + len(block), : p.shape[1]] = p
        return out_d, out_p

    def _exact_block(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k: FAISS's own result where its ties are stable (probed); otherwise fetch
        until every tie at the k-th distance is among the candidates."""
        rows = len(self._ids)
        if _faiss_ties_are_stable():
            step = max(1, _CANDIDATES // k)
            parts = [
                self._faiss.search(queries[i : i + step], k) for i in range(0, len(queries), step)
            ]
            d = np.concatenate([part[0] for part in parts]).astype(np.int64)
            p = np.concatenate([part[1] for part in parts])
            return _stable_top(d, p, k, rows)
        fetch = min(rows, k + max(16, k // 4))
        result_d = np.empty((len(queries), k), np.int64)
        result_p = np.empty((len(queries), k), np.int64)
        todo = np.arange(len(queries))
        while len(todo):
            # Many ties can push `fetch` towards N: bound the (queries x fetch) buffers.
            step = max(1, _CANDIDATES // fetch)
            parts = [
                self._faiss.search(queries[todo[i : i + step]], fetch)
                for i in range(0, len(todo), step)
            ]
            d = np.concatenate([part[0] for part in parts]).astype(np.int64)
            p = np.concatenate([part[1] for part in parts])
            # The candidates hold the true `fetch` smallest distances; if the last one is larger
            # than the k-th, every row at distance <= the k-th is a candidate.
            complete = (d[:, fetch - 1] > d[:, k - 1]) | (fetch >= rows)
            best_d, best_p = _stable_top(d[complete], p[complete], k, rows)
            result_d[todo[complete]] = best_d
            result_p[todo[complete]] = best_p
            todo = todo[~complete]
            fetch = min(rows, fetch * 4)
        return result_d, result_p

    def _approximate_block(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, k)
            bitmap = None
            if not self._alive.all():
                bitmap = np.packbits(self._alive, bitorder="little")
                params.sel = faiss.IDSelectorBitmap(len(self._alive), faiss.swig_ptr(bitmap))
            d, labels = self._faiss.search(queries, k, params=params)
            del bitmap  # kept alive until FAISS returned
        else:
            self._faiss.nprobe = min(self.nprobe, self._faiss.nlist)
            d, labels = self._faiss.search(queries, k)
        positions = self._labels_to_positions(labels.astype(np.int64))
        d = np.where(positions >= 0, d, MISSING_DISTANCE).astype(np.int64)
        return _stable_top(d, positions, k, len(self._ids))

    def _rerank(
        self, positions: np.ndarray, distances: np.ndarray, query_features: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._features is None:
            raise ValueError("rerank needs features: add codes with features=...")
        if query_features is None:
            raise ValueError("rerank needs query_features")
        queries = l2_normalize(np.asarray(query_features, dtype=np.float32))
        if queries.shape != (len(positions), self._features.shape[1]):
            raise ValueError(
                f"query_features must be ({len(positions)}, {self._features.shape[1]}), "
                f"got {queries.shape}"
            )
        found = positions >= 0
        candidates = self._features[np.maximum(positions, 0)]  # (Q, R, D)
        cosine = np.einsum("qrd,qd->qr", candidates, queries)
        cosine = np.where(found, cosine, -np.inf)
        order = np.argsort(-cosine, axis=1, kind="stable")
        return np.take_along_axis(positions, order, 1), np.take_along_axis(distances, order, 1)


def _stable_top(
    distances: np.ndarray, positions: np.ndarray, k: int, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k candidates with the smallest (distance, position); -1 positions last."""
    span = max(rows, 1) + 1
    pos = np.where(positions >= 0, positions, rows)  # missing: after every real row
    key = distances * span + pos
    key.sort(axis=1)
    key = key[:, :k]
    best_d, best_p = np.divmod(key, span)
    missing = best_p >= rows
    return np.where(missing, MISSING_DISTANCE, best_d), np.where(missing, -1, best_p)
