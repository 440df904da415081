"""The app's logic without the UI: queries, blind order, scores, dashboard tables, paging."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from retrieval import app_support as support
from retrieval.human_metrics import summarize
from retrieval.images import ImageLoadError
from retrieval.search import SearchHit, SearchResponse


def _png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, "PNG")
    return out.getvalue()


def _hits(n: int) -> list[SearchHit]:
    return [SearchHit(rank=i + 1, id=10 + i, path=f"/img/{i}.jpg", distance=i) for i in range(n)]


def test_upload_is_validated_and_kept_once_under_its_hash(tmp_path) -> None:
    data = _png()
    first = support.store_upload("photo.png", data, tmp_path)
    again = support.store_upload("renamed.PNG", data, tmp_path)
    assert first.content_hash == again.content_hash and len(first.content_hash) == 64
    assert first.path == tmp_path / f"{first.content_hash}.png" and first.path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temp files left over
    # A name without an image extension gets the extension of the decoded format.
    assert support.store_upload("blob", data, tmp_path).path.suffix == ".png"


@pytest.mark.parametrize("data", [b"", b"hello, not an image", _png()[:60]])
def test_bad_upload_raises_with_the_file_name_and_stores_nothing(tmp_path, data) -> None:
    with pytest.raises(ImageLoadError, match=r"broken\.jpg"):
        support.store_upload("broken.jpg", data, tmp_path)
    assert not list(tmp_path.iterdir())


def test_query_identity_is_the_file_content_and_its_crop(tmp_path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(_png())
    b.write_bytes(_png())
    assert support.query_from_path(a).content_hash == support.query_from_path(b).content_hash
    cropped = support.query_from_path(a, "dataset", box=(0, 0, 10, 10))
    assert cropped.content_hash != support.query_from_path(a).content_hash
    assert cropped.box == (0.0, 0.0, 10.0, 10.0) and cropped.source == "dataset"


def test_blind_order_is_a_stable_permutation_per_rater_and_query() -> None:
    hits = _hits(10)
    order = support.blind_order(hits, "alice", "q1")
    assert sorted(h.id for h in order) == [h.id for h in hits]
    assert order == support.blind_order(hits, " alice ", "q1")  # same seed, names trimmed
    assert order != hits  # shuffled (fixed seed: not the search order)
    others = [support.blind_order(hits, "bob", "q1"), support.blind_order(hits, "alice", "q2")]
    assert all(other != order for other in others)


def test_scores_keep_search_rank_and_distance_and_leave_skips_out() -> None:
    hits = _hits(4)
    chosen = {10: 7, 11: support.SKIP, 12: None, 13: 1}
    scores = support.scores_to_save(reversed(hits), chosen)
    assert {(s.result_id, s.score, s.rank, s.distance) for s in scores} == {
        ("10", 7, 1, 0),
        ("13", 1, 4, 3),
    }


def test_results_are_searched_once_per_query_index_and_k(tmp_path) -> None:
    calls = []

    def search(path, k, box=None, name=None):
        calls.append((Path(path).name, k))
        return SearchResponse(_hits(k), {"decode": 0, "encode": 0, "search": 0, "total": 0})

    searcher = SimpleNamespace(search=search, identity="idx:8b:abc")
    bundle = tmp_path / "idx"
    state: dict = {}
    assert support.results_for(state, searcher, bundle, 5) is None
    (tmp_path / "q.png").write_bytes(_png())
    state[support.QUERY_KEY] = support.query_from_path(tmp_path / "q.png")
    first = support.results_for(state, searcher, bundle, 5)
    assert support.results_for(state, searcher, bundle, 5) is first
    assert len(support.results_for(state, searcher, bundle, 3).hits) == 3
    assert calls == [("q.png", 5), ("q.png", 3)] and first.identity == "idx:8b:abc"


def test_bundles_are_the_folders_with_a_manifest(tmp_path) -> None:
    for name in ("b", "a", ".a.tmp-1", "empty"):
        (tmp_path / name).mkdir()
    for name in ("a", "b", ".a.tmp-1"):
        (tmp_path / name / "manifest.json").write_text("{}")
    assert [p.name for p in support.list_bundles(tmp_path)] == ["a", "b"]
    assert support.list_bundles(tmp_path / "missing") == []
    before = support.bundle_version(tmp_path / "a")
    (tmp_path / "a" / "manifest.json").unlink()
    (tmp_path / "a" / "manifest.json").write_text('{"x": 1}')
    assert support.bundle_version(tmp_path / "a") != before


def test_gallery_rows_filter_and_pages() -> None:
    metadata = [
        {"id": i, "path": f"/p/{name}.jpg", "group": i % 2} for i, name in enumerate("abcde")
    ]
    bundle = SimpleNamespace(metadata=metadata, removed={1: "now"})
    assert [r["id"] for r in support.live_rows(bundle)] == [0, 2, 3, 4]
    assert [r["id"] for r in support.live_rows(bundle, "D.JPG")] == [3]
    items, pages = support.page_of(list(range(7)), 3, 3)
    assert (list(items), pages) == ([6], 3)
    assert support.page_of([], 5, 3) == ([], 1)
    assert list(support.page_of(list(range(7)), 99, 3)[0]) == [6]  # clamped to the last page


def _record(method: str, bits: int | None, value: float, created: str) -> dict:
    return {
        "dataset": "demo",
        "method": method,
        "bits": bits,
        "backbone": "efficientnet_lite0",
        "created": created,
        "protocols": {"default": {"map": value, "precision_at_k": {"10": 0.5, "1": 1.0}}},
    }


def test_computed_results_table_and_map_vs_bits_chart() -> None:
    records = [
        _record("float", None, 0.98, "2026-01-01"),
        _record("itq", 16, 0.90, "2026-01-01"),
        _record("itq", 32, 0.95, "2026-01-02"),
        _record("itq", 32, 0.50, "2025-12-31"),  # an older run of the same setting
        _record("lsh", 32, 0.70, "2026-01-01"),
    ]
    frame = support.computed_results_frame(records)
    assert list(frame.columns[:6]) == support.RESULT_COLUMNS
    assert {"P@1", "P@10"} <= set(frame.columns) and len(frame) == 5
    assert len(support.latest_runs(frame)) == 4
    chart = support.map_vs_bits(frame)
    assert list(chart.index) == [16, 32]
    assert chart.loc[32, "itq"] == pytest.approx(95.0)  # newest run, in percent
    assert list(chart["float"]) == pytest.approx([98.0, 98.0])  # no bits: drawn flat
    assert math.isnan(chart.loc[16, "lsh"])
    assert support.computed_results_frame([]).empty and support.map_vs_bits(frame[:0]).empty


def test_human_tables_have_one_row_or_column_per_identity() -> None:
    rows = [
        {"index_identity": ident, "rater": rater, "query_hash": "q", "result_id": str(rank),
         "rank": rank, "distance": rank, "score": 11 - rank - (rater == "b")}
        for ident in ("demo:64b:abc", "big:32b:def") for rater in "ab" for rank in (1, 2, 3)
    ]  # fmt: skip
    summaries = summarize(rows)
    table = support.human_frame(summaries)
    assert sorted(table["index_identity"]) == ["big:32b:def", "demo:64b:abc"]
    assert set(table["ratings"]) == {6}
    by_rank = support.score_by_rank_frame(summaries)
    assert list(by_rank.index) == [1, 2, 3] and "demo · 64b · abc" in by_rank.columns
    assert by_rank["demo · 64b · abc"].tolist() == pytest.approx([9.5, 8.5, 7.5])

    # The computed mAP of the same hash model (by weight fingerprint) sits beside its ratings.
    def record(fingerprint: str, created: str, value: float) -> dict:
        return {
            "dataset": "demo",
            "method": "learned",
            "bits": 64,
            "backbone": "b",
            "model": {"fingerprint": fingerprint},
            "created": created,
            "protocols": {"default": {"map": value}},
        }

    computed = support.computed_results_frame(
        [record("abc", "2", 0.9), record("abc", "1", 0.5), record("zzz", "3", 0.7)]
    )
    joined = support.human_frame(summaries, computed).set_index("index_identity")
    assert joined.loc["demo:64b:abc", "computed mAP (%) of this model"] == "demo default: 90.0"
    assert joined.loc["big:32b:def", "computed mAP (%) of this model"] == ""


def test_thumbnail_is_a_small_jpeg_or_none(tmp_path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((900, 600, 3), np.uint8)).save(path)
    with Image.open(io.BytesIO(support.thumbnail(path, 100))) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == 100
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert support.thumbnail(tmp_path / "bad.jpg") is None


def test_dataset_queries_of_a_manifest(tmp_path) -> None:
    for name in ("q", "p", "x"):
        (tmp_path / f"{name}.png").write_bytes(_png())
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,group,is_query\nq.png,1,1\np.png,1,0\nx.png,,0\n")
    queries = support.dataset_queries(f"manifest:{manifest}")
    assert [(Path(path).name, box) for _, path, box in queries] == [("q.png", None)]
    assert json.dumps([q[0] for q in queries])  # names are plain strings
