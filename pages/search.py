"""Search: a query photo in, the most similar images of an index out, ranked by Hamming distance."""

from pathlib import Path

import streamlit as st

from retrieval.app_state import choose_index, choose_k, open_searcher, show_grid
from retrieval.app_support import (
    QUERY_KEY,
    live_rows,
    query_from_path,
    random_gallery_query,
    results_for,
    store_upload,
)
from retrieval.images import ImageLoadError

st.title("Search by photo")
st.caption(
    "Upload a photo, pick one from the index, or try a random one. Results are ranked by the "
    "Hamming distance between binary codes; equal distances keep the index's order."
)

index = choose_index()
if index is None:
    st.stop()
k = choose_k()
searcher = open_searcher(index)
bundle = searcher.bundle
rows = {row["id"]: row for row in live_rows(bundle)}


def _use_gallery_pick() -> None:
    picked = st.session_state.get("gallery_pick")
    if picked is not None:
        st.session_state[QUERY_KEY] = query_from_path(rows[picked]["path"], "gallery")
        st.session_state.pop("upload_error", None)


upload_column, pick_column = st.columns(2)
with upload_column:
    uploaded = st.file_uploader("Query photo", key="query_upload")
    if uploaded is None:
        st.session_state.pop("_upload_id", None)
    elif st.session_state.get("_upload_id") != uploaded.file_id:
        st.session_state["_upload_id"] = uploaded.file_id
        try:
            st.session_state[QUERY_KEY] = store_upload(uploaded.name, uploaded.getvalue())
            st.session_state.pop("upload_error", None)
        except ImageLoadError as error:
            st.session_state.pop(QUERY_KEY, None)
            st.session_state["upload_error"] = f"This file cannot be used as a query: {error}"
with pick_column:
    st.selectbox(
        "Gallery image",
        list(rows),
        index=None,
        format_func=lambda i: f"{Path(rows[i]['path']).name} (group {rows[i].get('group')})",
        placeholder="Choose an image of the index",
        key="gallery_pick",
        on_change=_use_gallery_pick,
    )
    if st.button("Random query"):
        st.session_state[QUERY_KEY] = random_gallery_query(bundle)
        st.session_state.pop("upload_error", None)

if st.session_state.get("upload_error"):
    st.error(st.session_state["upload_error"])

try:
    results = results_for(st.session_state, searcher, index, k)
except ImageLoadError as error:
    st.session_state.pop(QUERY_KEY, None)
    st.error(f"The query cannot be read any more: {error}")
    st.stop()
if results is None:
    st.info("Choose a query photo above to see the most similar images.")
    st.stop()

query_column, info_column = st.columns([1, 3])
query_column.image(str(results.query.path), caption=f"Query: {results.query.name}")
with info_column:
    timings = results.response.timings_ms
    for column, step in zip(st.columns(4), ("decode", "encode", "search", "total"), strict=True):
        column.metric(f"{step} (ms)", f"{timings[step]:.1f}")
    st.caption(
        f"Index `{searcher.identity}`: {len(searcher)} images, {bundle.bits}-bit codes. "
        f"Query content hash `{results.query.content_hash[:16]}`."
    )

st.subheader(f"Top {len(results.hits)}")
show_grid(
    [
        (hit.path, f"#{hit.rank} · distance {hit.distance} · {Path(hit.path).name}")
        for hit in results.hits
    ]
)
