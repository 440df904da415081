"""First run builds the demo collection, model and index once; later runs reuse them."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.bundle import load_bundle
from retrieval.quickstart import ensure_demo
from retrieval.ranking import unpack_bits
from retrieval.search import Searcher


@pytest.mark.slow
def test_ensure_demo_builds_once_and_repairs_a_broken_index(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path / "data"))
    first = ensure_demo()
    bundle = load_bundle(first.index_dir)
    assert len(bundle) == 189 and bundle.bits == 64
    # Balanced codes on the demo set: each bit's mean over the +-1 codes within +-0.2.
    signs = unpack_bits(bundle.codes).astype(int) * 2 - 1
    assert np.abs(signs.mean(axis=0)).max() <= 0.2
    model_mtime = (first.model_dir / "head.keras").stat().st_mtime_ns
    codes_mtime = (first.index_dir / "codes.npy").stat().st_mtime_ns

    second = ensure_demo()
    assert second == first
    assert (first.model_dir / "head.keras").stat().st_mtime_ns == model_mtime
    assert (first.index_dir / "codes.npy").stat().st_mtime_ns == codes_mtime

    (first.index_dir / "codes.npy").write_bytes(b"half a file")
    ensure_demo()
    repaired = Searcher(first.index_dir)
    query = repaired.bundle.metadata[0]["path"]
    assert repaired.search(query, k=1).hits[0].path == query
