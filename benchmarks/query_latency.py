"""End-to-end query latency on the demo index: JPEG file -> top-10 paths, vs the model alone.

For every demo image as a query (after a warm-up): p50/p95 of the whole ``Searcher.search``
(decode + backbone + hash head + Hamming search) and of each part, beside the compiled
backbone call alone on an in-memory tensor, measured in the same run.
Run: ``python benchmarks/query_latency.py [--queries 189] [--rerank 0]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.features import inference_for
from retrieval.quickstart import ensure_demo
from retrieval.search import Searcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=189)
    parser.add_argument("--rerank", type=int, default=0)
    args = parser.parse_args()

    searcher = Searcher(ensure_demo().index_dir)
    paths = [row["path"] for row in searcher.bundle.metadata][: args.queries]
    for path in paths[:5]:
        searcher.search(path, 10, rerank=args.rerank)  # trace and warm up

    parts: dict[str, list[float]] = {"decode": [], "encode": [], "search": [], "total": []}
    wall = []
    for path in paths:
        start = time.perf_counter()
        response = searcher.search(path, 10, rerank=args.rerank)
        wall.append(1000 * (time.perf_counter() - start))
        for key in parts:
            parts[key].append(response.timings_ms[key])

    forward = inference_for(searcher.backbone)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    forward(pixels)
    alone = []
    for _ in range(len(paths)):
        start = time.perf_counter()
        forward(pixels)
        alone.append(1000 * (time.perf_counter() - start))

    def row(name: str, values: list[float]) -> str:
        p50, p95 = np.percentile(values, [50, 95])
        return f"| {name} | {p50:.1f} | {p95:.1f} | {p50 / np.median(alone):.2f} |"

    print(f"\n{len(paths)} queries on the demo index ({len(searcher)} images, ", end="")
    print(f"{searcher.bundle.bits} bits, {searcher.backbone.name}), milliseconds:\n")
    print("| step | p50 | p95 | p50 / backbone alone |")
    print("|---|---:|---:|---:|")
    print(row("JPEG file -> top-10 paths (wall)", wall))
    for key in ("decode", "encode", "search"):
        print(row(f"  {key}", parts[key]))
    print(row("backbone alone, in-memory tensor (baseline)", alone))


if __name__ == "__main__":
    main()
