"""Each page of the Streamlit app driven by ``AppTest`` over a small real index.

The index holds six scikit-image photos encoded by EfficientNet-Lite0 and an untrained 32-bit
head (as in ``tests/test_search.py``): enough for real searches, built once per module.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata
from streamlit.testing.v1 import AppTest

from retrieval.app_support import QUERY_KEY, query_from_path
from retrieval.ratings import ResultScore, open_ratings
from retrieval.results import append_record
from retrieval.search import Searcher, build_index
from tests import builders

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 120  # the first search builds the backbone and traces the model


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A data dir holding one index ``mini`` of six photos; env points the app at it."""
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RETRIEVAL_DATA_DIR", str(root))
        env.setenv("RETRIEVAL_CACHE_DIR", str(root / "cache"))
        model_dir = builders.untrained_model_dir(root / "models" / "h32")
        photos = builders.write_photos(root / "photos")
        groups = list(range(len(photos)))
        build_index(model_dir, photos, root / "indexes" / "mini", groups=groups, progress=False)
        yield root


@pytest.fixture
def env(data_root, tmp_path, monkeypatch) -> Path:
    """The module's data dir, and a fresh ratings database and results store per test."""
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(data_root))
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(data_root / "cache"))
    monkeypatch.setenv("RETRIEVAL_RATINGS_DB", str(tmp_path / "ratings.db"))
    monkeypatch.setenv("RETRIEVAL_RESULTS", str(tmp_path / "results.jsonl"))
    return tmp_path


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if page is not None:
        at.switch_page(page).run()
    return at


def _by_label(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def _grid(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions if c.startswith("#")]


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.slow
def test_search_returns_k_results_for_a_gallery_image(env, data_root) -> None:
    at = _app()
    _no_exception(at)
    assert _by_label(at.selectbox, "Index").value == "mini"
    _by_label(at.select_slider, "Results (k)").set_value(5)
    coffee = next(i for i in at.selectbox(key="gallery_pick").options if "coffee" in i)
    at.selectbox(key="gallery_pick").select(coffee).run()
    _no_exception(at)
    grid = _grid(at)
    assert len(grid) == 5
    assert grid[0] == "#1 · distance 0 · coffee.jpg"  # the query itself is in the index
    distances = [int(c.split("distance ")[1].split(" ")[0]) for c in grid]
    assert distances == sorted(distances)
    assert {m.label for m in at.metric} == {
        "decode (ms)",
        "encode (ms)",
        "search (ms)",
        "total (ms)",
    }
    assert at.session_state[QUERY_KEY].path.name == "coffee.jpg"


@pytest.mark.slow
def test_corrupt_upload_shows_an_error_then_a_good_one_searches(env, data_root) -> None:
    at = _app()
    uploader = _by_label(at.file_uploader, "Query photo")
    uploader.set_value(("broken.jpg", b"\xff\xd8 this is not a jpeg", "image/jpeg")).run()
    _no_exception(at)
    assert len(at.error) == 1 and "broken.jpg" in at.error[0].value
    assert not _grid(at)

    photo = io.BytesIO()
    Image.fromarray(skdata.rocket()).save(photo, "PNG")
    _by_label(at.file_uploader, "Query photo").set_value(
        ("my rocket.png", photo.getvalue(), "image/png")
    )
    at.run()
    _no_exception(at)
    assert not at.error
    assert _grid(at)[0].endswith("rocket.jpg")
    query = at.session_state[QUERY_KEY]
    assert query.path == data_root / "queries" / f"{query.content_hash}.png"
    assert query.path.read_bytes() == photo.getvalue()


@pytest.mark.slow
def test_a_rating_submitted_on_the_rate_page_is_a_row_in_the_database(env, data_root) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state[QUERY_KEY] = query_from_path(data_root / "photos" / "chelsea.jpg")
    at.run().switch_page("pages/rate.py").run()
    assert [i.value for i in at.info] == ["Enter your name to start rating."]
    _by_label(at.text_input, "Rater name").set_value("alice").run()
    _no_exception(at)
    captions = [c for image in at.image for c in image.captions]
    assert not any("distance" in c for c in captions)  # blind: no distances shown
    assert sorted(c for c in captions if c.startswith("Image ")) == [
        f"Image {i}" for i in range(1, 7)
    ]
    _by_label(at.radio, "Score for image 1").set_value(8)
    _by_label(at.radio, "Score for image 2").set_value(2)
    _by_label(at.button, "Submit ratings").click().run()
    _no_exception(at)
    assert [s.value for s in at.success] == ["Saved 2 ratings. Press Next query for another one."]

    rows = open_ratings(env / "ratings.db").ratings()
    assert sorted(r.score for r in rows) == [2, 8]
    searcher = Searcher(data_root / "indexes" / "mini")
    hits = {str(h.id): h for h in searcher.search(data_root / "photos" / "chelsea.jpg", 10).hits}
    for row in rows:
        assert row.rater == "alice" and row.index_identity == searcher.identity
        assert (row.rank, row.distance) == (hits[row.result_id].rank, hits[row.result_id].distance)

    again = AppTest.from_file(APP, default_timeout=TIMEOUT)
    again.session_state[QUERY_KEY] = query_from_path(data_root / "photos" / "chelsea.jpg")
    again.run().switch_page("pages/rate.py").run()
    _by_label(again.text_input, "Rater name").set_value("alice").run()
    assert _by_label(again.radio, "Score for image 1").value == 8  # prefilled
    assert _by_label(again.radio, "Score for image 3").value == "skip"


def test_dashboard_renders_with_nothing_stored(env) -> None:
    at = _app("pages/dashboard.py")
    _no_exception(at)
    infos = " ".join(i.value for i in at.info)
    assert "No evaluation results yet" in infos and "No ratings yet" in infos
    assert not at.dataframe


def test_dashboard_shows_computed_and_human_results(env) -> None:
    for method, bits, value in (("float", None, 0.9), ("itq", 32, 0.8), ("itq", 64, 0.85)):
        append_record(
            {
                "dataset": "demo",
                "method": method,
                "bits": bits,
                "backbone": "efficientnet_lite0",
                "created": "2026-01-01",
                "protocols": {"default": {"map": value, "precision_at_k": {"5": 0.7}}},
            },
            env / "results.jsonl",
        )
    with open_ratings(env / "ratings.db") as store:
        for rater, scores in (("ann", (9, 5, 2)), ("bo", (8, 6, 1))):
            results = [ResultScore(str(r), s, r, r * 3) for r, s in enumerate(scores, 1)]
            store.save_ratings(rater, "q1", "/q1.jpg", "mini:32b:abc", results)
    at = _app("pages/dashboard.py")
    _no_exception(at)
    assert not at.info
    computed, human = (d.value for d in at.dataframe)
    assert set(computed["method"]) == {"float", "itq"} and "P@5" in computed.columns
    row = human.iloc[0]
    assert (row["index_identity"], row["ratings"], row["raters"]) == ("mini:32b:abc", 6, 2)
    assert row["mean_score"] == pytest.approx(31 / 6)
    assert row["spearman"] < 0  # closer codes were scored higher
    assert {m.label: m.value for m in at.metric}["ratings"] == "6"


@pytest.mark.slow
def test_gallery_browses_and_adds_images(env, data_root) -> None:
    shutil.copytree(data_root / "indexes" / "mini", data_root / "indexes" / "mini_copy")
    try:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        at.switch_page("pages/gallery.py").run()
        _by_label(at.selectbox, "Index").select("mini_copy").run()
        _no_exception(at)
        assert len(at.image) == 6
        good = io.BytesIO()
        Image.fromarray(skdata.immunohistochemistry()).save(good, "PNG")
        _by_label(at.file_uploader, "Images to add").set_value(
            [("cells.png", good.getvalue(), "image/png"), ("junk.jpg", b"junk", "image/jpeg")]
        )
        _by_label(at.button, "Add to index").click().run()
        _no_exception(at)
        assert next(s.value for s in at.success).startswith("Added 1 images")
        skipped = at.dataframe[0].value
        assert list(skipped["file"]) == ["junk.jpg"]
        at.run()
        assert len(at.image) == 7
        at.switch_page("pages/search.py").run()  # the cached Searcher sees the new image
        assert _by_label(at.selectbox, "Index").value == "mini_copy"  # remembered
        added = next(i for i in at.selectbox(key="gallery_pick").options if "group None" in i)
        assert added.endswith(".png (group None)")  # kept as data/uploads/<hash>.png
        at.selectbox(key="gallery_pick").select(added).run()
        _no_exception(at)
        assert _grid(at)[0].startswith("#1 · distance 0 · ") and len(_grid(at)) == 7
    finally:
        shutil.rmtree(data_root / "indexes" / "mini_copy")


def test_without_an_index_the_app_says_what_to_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RETRIEVAL_RATINGS_DB", str(tmp_path / "ratings.db"))
    at = _app()
    _no_exception(at)
    assert "make run" in at.warning[0].value and "python -m retrieval demo" in at.warning[0].value
