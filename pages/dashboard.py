"""Dashboard: computed mAP from evaluation runs beside what people scored, per index/model."""

import streamlit as st

from retrieval.app_state import ratings_store
from retrieval.app_support import (
    computed_results_frame,
    human_frame,
    latest_runs,
    map_vs_bits,
    score_by_rank_frame,
)
from retrieval.human_metrics import summarize
from retrieval.results import read_records

st.title("Evaluation dashboard")
computed_column, human_column = st.columns(2, gap="large")

with computed_column:
    st.header("Computed (ground truth)")
    records, problems = read_records()
    for problem in problems:
        st.warning(problem)
    frame = computed_results_frame(records)
    if frame.empty:
        st.info(
            "No evaluation results yet. Run for example "
            "`python -m retrieval evaluate --dataset demo --compare float,lsh,pca,itq`."
        )
    else:
        every_run = st.toggle("Show every run (not only the newest of each setting)")
        shown = frame if every_run else latest_runs(frame)
        st.dataframe(shown, hide_index=True, width="stretch")
        for dataset, part in frame.groupby("dataset", sort=True):
            chart = map_vs_bits(part)
            if not chart.empty:
                st.caption(f"mAP (%) vs bits, {dataset} (float features drawn flat)")
                st.line_chart(chart, x_label="bits", y_label="mAP (%)")
        st.download_button(
            "Download results CSV",
            frame.to_csv(index=False),
            file_name="results.csv",
            mime="text/csv",
        )

with human_column:
    st.header("Human ratings")
    store = ratings_store()
    threshold = st.slider("Relevant when the score is at least", 1, 10, 6)
    k = st.slider("k for precision@k and nDCG@k", 1, 50, 10)
    rows = store.ratings()
    if not rows:
        st.info("No ratings yet: rate some results on the Rate page.")
    else:
        summaries = summarize(rows, k=k, threshold=threshold)
        stats = store.stats()
        for column, name in zip(st.columns(4), stats, strict=True):
            column.metric(name.replace("_", " "), stats[name])
        st.dataframe(human_frame(summaries, frame), hide_index=True, width="stretch")
        st.caption("Mean score by search rank (rank 1 = the closest code)")
        st.line_chart(score_by_rank_frame(summaries), x_label="rank", y_label="mean score")
    st.download_button(
        "Download ratings CSV",
        str(store.export_csv()),
        file_name="ratings.csv",
        mime="text/csv",
        disabled=not rows,
    )

with st.expander("What the human numbers mean"):
    st.markdown(
        "- **mean score**: the average 1-10 score over all ratings.\n"
        "- **precision@k**: per rater and query, the share of rated results in the top k "
        "scoring at least the threshold; averaged over raters, then over queries.\n"
        "- **nDCG@k**: the scores as gains in search order against the same scores sorted "
        "best first: 1 when the index ranked what people liked first.\n"
        "- **spearman**: rank correlation of Hamming distance and score; negative is good "
        "(closer codes look more similar).\n"
        "- **agreement**: on pairs rated by several people, the mean score difference, the "
        "share agreeing on relevant or not, and Krippendorff's alpha.\n"
        "- Skipped images are not counted."
    )
