"""End to end in a real browser: the Streamlit app on a free port, driven by headless Chromium.

Search a photo, see the ranked grid, rate the results on the Rate page, and find the ratings in
the SQLite database. Debian's ``/usr/bin/chromium`` is driven through Playwright (its own
browser download does not work here; ``.ci/run`` installs the Debian package). Without the
browser the tests are skipped locally and fail in CI (``CI=true``).

``UPDATE_SCREENSHOT=1`` builds the real demo index instead of the small test one and rewrites
``docs/screenshot-search.png`` (the README's picture) from the Search page with its results.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval.ratings import open_ratings
from tests import builders
from tests.browser_support import (
    SCREENSHOT_PATH,
    AppServer,
    app_env,
    build_demo_index,
    build_small_index,
    launch_chromium,
    require_chromium,
    run_app,
    update_screenshot,
)

pytestmark = pytest.mark.slow  # starts a server, builds EfficientNet-Lite0, drives a browser

FIRST_LOAD_MS = 180_000  # the first search imports TensorFlow and builds the model: bounded
STEP_MS = 60_000  # every other wait in the browser
RATER = "Ada Browser"
SCORES = {1: 9, 2: 3, 3: 7}  # blind position on the Rate page -> score given


@pytest.fixture(scope="module")
def app_root(tmp_path_factory) -> Path:
    """A temporary root with photos and an index bundle under ``data/indexes``."""
    require_chromium()  # skip (or fail in CI) before building anything
    root = tmp_path_factory.mktemp("app")
    env = app_env(root)
    photos = builders.write_photos(root / "photos")
    if update_screenshot():
        build_demo_index(env)
    else:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RETRIEVAL_CACHE_DIR", env["RETRIEVAL_CACHE_DIR"])
            patch.setenv("RETRIEVAL_DATA_DIR", env["RETRIEVAL_DATA_DIR"])
            build_small_index(root / "data", photos)
    return root


@pytest.fixture(scope="module")
def server(app_root) -> Iterator[AppServer]:
    with run_app(app_env(app_root), app_root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser(app_root):
    with launch_chromium() as launched:
        yield launched


@pytest.fixture
def page(browser, server):
    """A fresh browser context (new session) on the app; the server's output is printed
    at teardown, so that a failing test shows it."""
    height = 1300 if update_screenshot() else 1000
    context = browser.new_context(viewport={"width": 1400, "height": height})
    tab = context.new_page()
    tab.set_default_timeout(STEP_MS)
    try:
        yield tab
    finally:
        context.close()
        print(f"--- streamlit output ({server.url}) ---\n{server.output()}")


def _no_exception(page) -> None:
    """No Streamlit exception box on the page."""
    errors = page.get_by_test_id("stException")
    assert errors.count() == 0, errors.first.inner_text()


def _open_page(page, name: str) -> None:
    """Click the sidebar navigation link ``name`` (keeps the session, unlike a new URL)."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name).click()


def _wait_until_idle(page) -> None:
    """Until the script has finished running (no "Running..." status) and images are loaded."""
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stStatusWidget"]')
             && [...document.querySelectorAll('[data-testid="stImage"] img')]
                .every((img) => img.complete && img.naturalWidth > 0)""",
        timeout=STEP_MS,
    )


def test_app_loads_with_navigation(page, server) -> None:
    page.goto(server.url, timeout=STEP_MS)
    page.get_by_role("heading", name="Search by photo").wait_for()
    navigation = page.get_by_test_id("stSidebarNav")
    for name in ("Search", "Rate", "Dashboard", "Gallery"):
        assert navigation.get_by_role("link", name=name).is_visible()
    assert "Image retrieval" in page.title()
    _no_exception(page)


def _warm_up(browser, server, photo: Path) -> None:
    """One search in a throwaway session, so that the screenshot shows warm timings (the first
    query of a process also traces the model)."""
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.set_default_timeout(STEP_MS)
        tab.goto(server.url, timeout=STEP_MS)
        uploader = tab.get_by_test_id("stFileUploader").filter(has_text="Query photo")
        uploader.locator("input[type=file]").set_input_files(photo)
        tab.get_by_text(re.compile(r"^#1 · distance \d+ · ")).first.wait_for(timeout=FIRST_LOAD_MS)
    finally:
        context.close()


def test_search_then_rate_then_find_rows(page, browser, server, app_root) -> None:
    photo = app_root / "photos" / "chelsea.jpg"
    if update_screenshot():
        _warm_up(browser, server, app_root / "photos" / "coffee.jpg")
    page.goto(server.url, timeout=STEP_MS)
    page.get_by_role("heading", name="Search by photo").wait_for()

    # Search: upload through the "Query photo" uploader; wait for the ranked grid.
    uploader = page.get_by_test_id("stFileUploader").filter(has_text="Query photo")
    uploader.locator("input[type=file]").set_input_files(photo)
    first = page.get_by_text(re.compile(r"^#1 · distance \d+ · ")).first
    first.wait_for(timeout=FIRST_LOAD_MS)
    captions = page.get_by_text(re.compile(r"^#\d+ · distance \d+ · "))
    count = captions.count()
    assert count >= 3, f"only {count} results"
    ranks = [int(re.match(r"#(\d+)", captions.nth(i).inner_text()).group(1)) for i in range(count)]
    assert ranks == list(range(1, count + 1))
    if not update_screenshot():
        # The small index holds this very photo: it comes back first, at distance 0.
        assert first.inner_text() == "#1 · distance 0 · chelsea.jpg"
        assert count == 6
    page.get_by_role("heading", name=f"Top {count}").wait_for()
    _no_exception(page)
    if update_screenshot():
        _wait_until_idle(page)
        SCREENSHOT_PATH.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOT_PATH, full_page=True)

    # Rate: same session, so the uploaded query and its results carry over.
    _open_page(page, "Rate")
    page.get_by_role("heading", name="Rate results").wait_for()
    name = page.get_by_label("Rater name")
    name.fill(RATER)
    name.press("Enter")
    page.get_by_text("Query: chelsea.jpg").wait_for()
    for position, score in SCORES.items():
        group = page.get_by_role("radiogroup", name=f"Score for image {position}", exact=True)
        group.get_by_text(str(score), exact=True).click()
        expect_checked = group.get_by_role("radio", name=str(score), exact=True)
        assert expect_checked.is_checked()
    page.get_by_role("button", name="Submit ratings").click()
    page.get_by_text(f"Saved {len(SCORES)} ratings").wait_for()
    _no_exception(page)

    # The database holds one row per scored image, for this rater and this query.
    with open_ratings(server.ratings_db) as store:
        rows = store.ratings(rater=RATER)
    assert sorted(r.score for r in rows) == sorted(SCORES.values())
    assert {r.rater for r in rows} == {RATER}
    assert {r.query_hash for r in rows} == {hashlib.sha256(photo.read_bytes()).hexdigest()}
    assert len({r.result_id for r in rows}) == len(SCORES)
    assert all(1 <= r.rank <= count and r.distance is not None for r in rows)
    assert all(Path(r.query_path).is_file() for r in rows)
