"""Rate: score each result of a query 1-10 for similarity, blind (shuffled, no distances)."""

import streamlit as st

from retrieval.app_state import (
    cached_thumbnail,
    choose_index,
    choose_k,
    get_dataset_queries,
    open_searcher,
    ratings_store,
    text_remembered,
)
from retrieval.app_support import (
    QUERY_KEY,
    SCORE_OPTIONS,
    SKIP,
    blind_order,
    query_from_path,
    random_gallery_query,
    results_for,
    scores_to_save,
)
from retrieval.datasets import DatasetError
from retrieval.images import ImageLoadError
from retrieval.ratings import InvalidRatingError

st.title("Rate results")
st.caption(
    "How similar is each image to the query? 1 = unrelated, 10 = the same scene or object. "
    "The results are shown in a shuffled order without their distances, so that the ranking "
    "does not sway you. Skip an image you cannot judge."
)
rater = text_remembered("Rater name", "app_rater").strip()
if not rater:
    st.info("Enter your name to start rating.")
    st.stop()
index = choose_index()
if index is None:
    st.stop()
k = choose_k()
rating_area, next_area = st.container(), st.container()

with next_area:
    st.subheader("Next query")
    sources = ("Random gallery image", "Evaluation dataset queries", "Upload on the Search page")
    source = st.radio("Next query from", sources, horizontal=True, key="next_source")
    spec = ""
    if source == sources[1]:
        spec = st.text_input("Dataset spec", placeholder="demo, or holidays:/path/to/holidays")
    if st.button("Next query"):
        if source == sources[0]:
            st.session_state[QUERY_KEY] = random_gallery_query(open_searcher(index).bundle)
        elif source == sources[2]:
            st.switch_page("pages/search.py")
        else:
            try:
                queries = get_dataset_queries(spec.strip())
            except DatasetError as error:
                st.error(f"Cannot load that dataset: {error}")
            else:
                if not queries:
                    st.error("That dataset has no queries.")
                else:
                    positions = st.session_state.setdefault("dataset_positions", {})
                    position = positions.get(spec.strip(), 0)
                    _, path, box = queries[position % len(queries)]
                    positions[spec.strip()] = position + 1
                    st.session_state[QUERY_KEY] = query_from_path(path, "dataset", box)

with rating_area:
    searcher = open_searcher(index)
    try:
        results = results_for(st.session_state, searcher, index, k)
    except ImageLoadError as error:
        st.error(f"The query cannot be read: {error}")
        results = None
    if results is None:
        st.info("No query yet: search on the Search page, or press Next query below.")
        st.stop()
    query = results.query
    store = ratings_store()
    previous = store.scores_for(rater, query.content_hash, results.identity)
    st.image(str(query.path), caption=f"Query: {query.name}", width=320)
    with st.form("ratings"):
        chosen = {}
        order = blind_order(results.hits, rater, query.content_hash)
        for start in range(0, len(order), 3):
            for column, (position, hit) in zip(
                st.columns(3), enumerate(order[start : start + 3], start + 1), strict=False
            ):
                with column:
                    image = cached_thumbnail(hit.path)
                    if image is not None:
                        st.image(image, caption=f"Image {position}", width="stretch")
                    chosen[hit.id] = st.radio(
                        f"Score for image {position}",
                        SCORE_OPTIONS,
                        index=SCORE_OPTIONS.index(previous.get(str(hit.id), SKIP)),
                        horizontal=True,
                        key=f"score|{rater}|{results.identity}|{query.content_hash}|{hit.id}",
                    )
        submitted = st.form_submit_button("Submit ratings", type="primary")
    if submitted:
        scores = scores_to_save(results.hits, chosen)
        if not scores:
            st.warning("Nothing saved: every image is skipped.")
        else:
            try:
                saved = store.save_ratings(
                    rater, query.content_hash, str(query.path), results.identity, scores
                )
            except InvalidRatingError as error:
                st.error(f"Not saved: {error}")
            else:
                st.success(f"Saved {saved} ratings. Press Next query for another one.")
    elif previous:
        st.caption(f"You rated {len(previous)} of these before; your scores are filled in.")
