"""Exact and approximate Hamming top-k on random codes, against numpy and the memory floor.

For each collection size and code length, in one run: per-query latency (p50/p95) of exact
top-k through ``BinaryIndex`` (FAISS flat), batched queries/s, index memory; a numpy
brute-force baseline (``hamming_distances`` + argpartition); the time to read the codes once
(``db.sum()`` over uint64 words: the bandwidth floor) and exact / floor; then HNSW and IVF:
recall@k against exact (a result counts when its distance is within the exact k-th distance,
so ties do not matter) and batched speed-up over exact. Prints markdown tables.
Run: ``python benchmarks/search.py [--sizes 10000,100000,1000000] [--bits 64,128]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.index import BinaryIndex
from retrieval.ranking import hamming_distances

# Each approximate index is built once per (N, bits) and searched at several settings.
APPROXIMATE = {
    "hnsw": ({"hnsw_m": 16, "ef_construction": 40}, "ef_search", (128, 512)),
    "ivf": ({}, "nprobe", (16, 64)),
}


def timed(function, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls, seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def latencies(index: BinaryIndex, queries: np.ndarray, k: int) -> np.ndarray:
    """Seconds per single-query search."""
    out = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], k)
        out.append(time.perf_counter() - start)
    return np.asarray(out)


def numpy_top_k(query: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """Brute-force top-k of one query: XOR + popcount, argpartition, stable sort of the k."""
    distances = hamming_distances(query[None], database)[0]
    part = np.argpartition(distances, k - 1)[:k]
    return part[np.lexsort((part, distances[part]))]


def recall_by_distance(approx_d: np.ndarray, exact_d: np.ndarray) -> float:
    """Share of returned results at or within the exact k-th distance."""
    return float((approx_d <= exact_d[:, -1:]).mean())


def make_codes(
    rng: np.random.Generator, n: int, n_queries: int, bits: int, data: str
) -> tuple[np.ndarray, np.ndarray]:
    """Database and query codes: uniform random, or near-duplicate groups around centres.

    ``clustered``: n/100 random centres; every code is a centre with each bit flipped with
    probability 0.15, like the views of one photo; queries are drawn the same way.
    """
    nbytes = bits // 8
    if data == "random":
        return (
            rng.integers(0, 256, (n, nbytes), dtype=np.uint8),
            rng.integers(0, 256, (n_queries, nbytes), dtype=np.uint8),
        )
    centres = rng.integers(0, 2, (max(1, n // 100), bits), dtype=np.uint8)

    def around(count: int) -> np.ndarray:
        codes = np.empty((count, nbytes), np.uint8)
        for start in range(0, count, 100_000):
            stop = min(count, start + 100_000)
            picked = centres[rng.integers(0, len(centres), stop - start)]
            flips = (rng.random((stop - start, bits)) < 0.15).astype(np.uint8)
            codes[start:stop] = np.packbits(picked ^ flips, axis=1)
        return codes

    return around(n), around(n_queries)


def run(sizes: list[int], bits_list: list[int], k: int, seed: int, data: str) -> None:
    rng = np.random.default_rng(seed)
    exact_rows, approx_rows = [], []
    for n in sizes:
        single = 200 if n <= 100_000 else 40
        batch = 1000 if n <= 100_000 else 200
        baseline_q = 50 if n <= 100_000 else 10
        for bits in bits_list:
            database, queries = make_codes(rng, n, batch, bits, data)
            flat = BinaryIndex(bits)
            flat.add(database)
            flat.search(queries[:2], k)  # warm-up
            lat = latencies(flat, queries[:single], k)
            raw = flat._faiss  # the bare FAISS index: what the wrapper adds per call
            raw_lat = [timed(lambda q=q, raw=raw: raw.search(q[None], k)) for q in queries[:single]]
            batched = timed(lambda flat=flat, queries=queries: flat.search(queries, k))
            exact_d, _ = flat.search(queries, k)
            numpy_times = [
                timed(lambda q=q, db=database: numpy_top_k(q, db, k)) for q in queries[:baseline_q]
            ]
            words = database.view(np.uint64)
            floor = timed(words.sum, repeat=5)
            p50 = float(np.percentile(lat, 50))
            exact_rows.append(
                [
                    f"{n:,}",
                    bits,
                    f"{database.nbytes / 2**20:.1f}",
                    f"{flat.memory_bytes() / 2**20:.1f}",
                    f"{p50 * 1e3:.3f}",
                    f"{np.percentile(lat, 95) * 1e3:.3f}",
                    f"{np.median(raw_lat) * 1e3:.3f}",
                    f"{batch / batched:,.0f}",
                    f"{np.median(numpy_times) * 1e3:.3f}",
                    f"{floor * 1e3:.3f}",
                    f"{p50 / floor:.1f}",
                    f"{batched / batch / floor:.2f}",
                ]
            )
            for kind, (options, knob, values) in APPROXIMATE.items():
                build = time.perf_counter()
                approx = BinaryIndex(bits, kind, **options)
                approx.add(database)
                build = time.perf_counter() - build
                for value in values:
                    setattr(approx, knob, value)
                    approx.search(queries[:2], k)
                    seconds = timed(lambda a=approx, queries=queries: a.search(queries, k))
                    approx_d, _ = approx.search(queries, k)
                    detail = (
                        f"M={approx.hnsw_m} efC={approx.ef_construction} efS={value}"
                        if kind == "hnsw"
                        else f"nlist={approx.nlist} nprobe={value}"
                    )
                    approx_rows.append(
                        [
                            f"{n:,}",
                            bits,
                            kind,
                            detail,
                            f"{build:.1f}",
                            f"{approx.memory_bytes() / 2**20:.1f}",
                            f"{recall_by_distance(approx_d, exact_d):.3f}",
                            f"{batch / seconds:,.0f}",
                            f"{batched / seconds:.1f}",
                        ]
                    )
                del approx
            print(f"done: n={n:,} bits={bits}", file=sys.stderr, flush=True)

    threads = faiss.omp_get_max_threads()
    print(
        f"\nExact top-{k} (BinaryIndex flat = FAISS IndexBinaryFlat + stable ties), "
        f"{data} codes, FAISS threads: {threads}\n"
    )
    print_table(
        [
            "N",
            "bits",
            "codes MB",
            "index MB",
            "1-query p50 ms",
            "p95 ms",
            "bare FAISS p50 ms",
            "batched q/s",
            "numpy 1-query ms",
            "floor ms",
            "p50 / floor",
            "batched per-query / floor",
        ],
        exact_rows,
    )
    print(f"\nApproximate top-{k} vs exact (batched, same queries)\n")
    print_table(
        ["N", "bits", "kind", "settings", "build s", "index MB", f"recall@{k}", "q/s", "speed-up"],
        approx_rows,
    )


def print_table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--bits", default="64,128")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data",
        default="clustered",
        choices=("clustered", "random"),
        help="near-duplicate groups (like real codes) or uniform random codes (worst case)",
    )
    args = parser.parse_args()
    run(
        [int(s) for s in args.sizes.split(",")],
        [int(b) for b in args.bits.split(",")],
        args.k,
        args.seed,
        args.data,
    )


if __name__ == "__main__":
    main()
