"""The Streamlit side shared by the pages: heavy objects cached once per process, and the
index / k choices that must survive page switches (widget state does not)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from retrieval.app_support import (
    INDEX_KEY,
    K_KEY,
    K_OPTIONS,
    bundle_version,
    dataset_queries,
    list_bundles,
    thumbnail,
)
from retrieval.bundle import Bundle, BundleError, load_bundle
from retrieval.config import indexes_dir, ratings_db_path
from retrieval.hashing import HashModelError
from retrieval.ratings import RatingsStore, open_ratings
from retrieval.search import Searcher


def no_index_message() -> str:
    """What to do when there is no index bundle yet."""
    return (
        f"No index found under `{indexes_dir()}`. Build the demo index first: run "
        "`make run` (or `python -m retrieval demo`) in a terminal, then reload this page."
    )


@st.cache_resource(max_entries=8, show_spinner="Loading the index and its model ...")
def get_searcher(path: str, version: str) -> Searcher:
    """One Searcher per bundle path and version (a rewritten bundle gets a fresh one)."""
    del version  # part of the cache key only
    return Searcher(path)


@st.cache_resource(max_entries=8)
def get_bundle(path: str, version: str) -> Bundle:
    """The bundle's codes and metadata (no model), for browsing."""
    del version
    return load_bundle(path, verify=False)


@st.cache_resource
def get_store(path: str) -> RatingsStore:
    """The ratings database at ``path``, opened once per process."""
    return open_ratings(path)


def ratings_store() -> RatingsStore:
    """The ratings database configured now (``RETRIEVAL_RATINGS_DB`` or the default)."""
    return get_store(str(ratings_db_path()))


@st.cache_resource(max_entries=4, show_spinner="Loading the dataset's queries ...")
def get_dataset_queries(spec: str) -> list[tuple[str, Path, tuple[float, ...] | None]]:
    """(name, path, box) of an evaluation dataset's queries, loaded once per spec."""
    return dataset_queries(spec)


def open_index(path: Path) -> Bundle:
    """The bundle at ``path`` (cached per version); a broken one stops the page with an error."""
    try:
        return get_bundle(str(path), bundle_version(path))
    except BundleError as error:
        st.error(f"Cannot open the index `{path.name}`: {error}")
        st.stop()


def open_searcher(path: Path) -> Searcher:
    """The Searcher of the bundle at ``path`` (cached per version); errors stop the page."""
    try:
        return get_searcher(str(path), bundle_version(path))
    except (BundleError, HashModelError, ValueError, OSError) as error:
        st.error(f"Cannot load the index `{path.name}` and its model: {error}")
        st.stop()


def _remember(widget_key: str, key: str) -> None:
    st.session_state[key] = st.session_state[widget_key]


def choose_index() -> Path | None:
    """The index selectbox (label "Index"); remembers the choice across pages. None if none."""
    bundles = {b.name: b for b in list_bundles()}
    if not bundles:
        st.warning(no_index_message())
        return None
    names = list(bundles)
    if st.session_state.get(INDEX_KEY) not in names:
        st.session_state[INDEX_KEY] = "demo" if "demo" in names else names[0]
    # Widget state is dropped on a page switch: the choice lives under a plain key.
    st.session_state["_index_widget"] = st.session_state[INDEX_KEY]
    st.selectbox(
        "Index", names, key="_index_widget", on_change=_remember, args=("_index_widget", INDEX_KEY)
    )
    return bundles[st.session_state[INDEX_KEY]]


def choose_k() -> int:
    """The "Results (k)" selector; remembers the choice across pages."""
    if st.session_state.get(K_KEY) not in K_OPTIONS:
        st.session_state[K_KEY] = 10
    st.session_state["_k_widget"] = st.session_state[K_KEY]
    st.select_slider(
        "Results (k)", K_OPTIONS, key="_k_widget", on_change=_remember, args=("_k_widget", K_KEY)
    )
    return int(st.session_state[K_KEY])


def text_remembered(label: str, key: str, **options: object) -> str:
    """A text input whose value survives page switches (kept under ``key``)."""
    st.session_state.setdefault(key, "")
    st.session_state[f"_{key}_widget"] = st.session_state[key]
    st.text_input(
        label, key=f"_{key}_widget", on_change=_remember, args=(f"_{key}_widget", key), **options
    )
    return str(st.session_state[key])


@st.cache_data(max_entries=4000, show_spinner=False)
def _thumbnail(path: str, stamp: str, max_side: int) -> bytes | None:
    del stamp
    return thumbnail(path, max_side)


def cached_thumbnail(path: str | Path, max_side: int = 320) -> bytes | None:
    """A small JPEG of the image at ``path`` (cached until the file changes); None if unreadable."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return _thumbnail(str(path), f"{stat.st_mtime_ns}-{stat.st_size}", max_side)


def show_grid(items: list[tuple[str | Path, str]], columns: int = 5) -> None:
    """Images with captions in rows of ``columns``; an unreadable file shows a warning instead."""
    for start in range(0, len(items), columns):
        for column, (path, caption) in zip(
            st.columns(columns), items[start : start + columns], strict=False
        ):
            image = cached_thumbnail(path)
            if image is None:
                column.warning(f"cannot read {Path(path).name}")
            else:
                column.image(image, caption=caption, width="stretch")
