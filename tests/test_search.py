"""Index building and search end to end: real backbone, a hash head, a bundle on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

from retrieval.bundle import BundleError, load_bundle, remove_from_bundle
from retrieval.cli import main
from retrieval.search import Searcher, add_images, build_index
from retrieval.storage import content_hash
from tests import builders

pytestmark = pytest.mark.slow  # builds EfficientNet-Lite0 (a few seconds) and encodes photos


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return builders.untrained_model_dir(tmp_path_factory.mktemp("model") / "h32")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return builders.write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_query_in_the_index_comes_back_first(isolated, model_dir, photos) -> None:
    bad = isolated / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    report = build_index(model_dir, [*photos, bad], isolated / "index", progress=False)
    assert report.added == len(photos)
    assert [Path(p).name for p, _ in report.skipped] == ["broken.jpg"]
    assert report.bundle.model_dir is not None and report.bundle.bits == 32
    assert all(row["content_hash"] == content_hash(row["path"]) for row in report.bundle.metadata)

    searcher = Searcher(isolated / "index")
    for photo in photos:
        response = searcher.search(photo, k=3)
        assert Path(response.hits[0].path).name == photo.name
        assert response.hits[0].distance == 0 and response.hits[0].rank == 1
        assert [h.distance for h in response.hits] == sorted(h.distance for h in response.hits)
        assert set(response.timings_ms) == {"decode", "encode", "search", "total"}
    # An RGB array and raw bytes are queries too.
    assert searcher.search(skdata.coffee(), k=1).hits[0].path.endswith("coffee.jpg")
    assert searcher.search(photos[0].read_bytes(), k=1).hits[0].path.endswith("chelsea.jpg")


def test_reindexing_reuses_cached_features(isolated, model_dir, photos) -> None:
    first = build_index(model_dir, photos, isolated / "index", progress=False)
    again = build_index(model_dir, photos, isolated / "index", progress=False)
    assert first.computed == len(photos) and again.computed == 0
    np.testing.assert_array_equal(first.bundle.codes, again.bundle.codes)


def test_added_images_are_found_and_removed_ones_never(isolated, model_dir, photos) -> None:
    build_index(model_dir, photos[:4], isolated / "index", progress=False)
    report = add_images(isolated / "index", photos[4:], progress=False)
    assert report.added == 2 and len(report.bundle) == 6
    searcher = Searcher(isolated / "index")
    assert searcher.search(photos[5], k=1).hits[0].path.endswith(photos[5].name)

    target = next(r["id"] for r in report.bundle.metadata if r["path"].endswith("coffee.jpg"))
    remove_from_bundle(isolated / "index", [target])
    after = Searcher(isolated / "index").search(photos[1], k=10)
    assert all(not hit.path.endswith("coffee.jpg") for hit in after.hits)
    assert len(after.hits) == 5


def test_tampered_bundle_is_refused(isolated, model_dir, photos) -> None:
    build_index(model_dir, photos[:3], isolated / "index", progress=False)
    codes = isolated / "index" / "codes.npy"
    codes.write_bytes(codes.read_bytes()[:-3])
    with pytest.raises(BundleError, match=r"codes\.npy"):
        Searcher(isolated / "index")


def test_index_and_search_cli(isolated, model_dir, photos, capsys) -> None:
    manifest = isolated / "photos.csv"
    rows = ["path,group,is_query", f"{photos[0]},a,1", f"{photos[1]},a,0"]
    rows += [f"{p},," for p in photos[2:]]  # no group: distractors
    manifest.write_text("\n".join(rows) + "\n")
    out = isolated / "cli_index"
    code = main(
        ["index", "--model", str(model_dir), "--dataset", f"manifest:{manifest}", "--out", str(out)]
    )
    assert code == 0
    assert "6 images, 32-bit codes" in capsys.readouterr().out
    bundle = load_bundle(out)
    groups = [row["group"] for row in bundle.metadata]
    assert groups[0] == groups[1] and len(set(groups)) == 5  # one group of two, 4 distractors
    query = str(photos[3])
    assert main(["search", "--index", str(out), "--image", query, "--top-k", "4", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert Path(payload["results"][0]["path"]).name == photos[3].name
    assert payload["results"][0]["distance"] == 0 and len(payload["results"]) == 4
    with pytest.raises(SystemExit, match="cannot read image"):
        main(["search", "--index", str(out), "--image", str(isolated / "missing.jpg")])
