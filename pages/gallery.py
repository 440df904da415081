"""Gallery: browse the images of an index, and add more (uploads or a folder on the server)."""

from pathlib import Path

import streamlit as st

from retrieval.app_state import choose_index, open_index, show_grid
from retrieval.app_support import add_to_index, live_rows, page_of

PER_PAGE = 30

st.title("Gallery")
index = choose_index()
if index is None:
    st.stop()
bundle = open_index(index)
st.caption(
    f"`{index.name}`: {len(bundle)} images, {bundle.bits}-bit codes, "
    f"model trained on {bundle.model.get('trained_on') or 'unknown data'}."
)

text = st.text_input("Filter by path or group")
rows = live_rows(bundle, text)
pages = page_of(rows, 1, PER_PAGE)[1]
page = int(st.number_input(f"Page (of {pages})", 1, pages, 1)) if pages > 1 else 1
items, _ = page_of(rows, page, PER_PAGE)
if not rows:
    st.info("No image matches." if text else "This index holds no images.")
show_grid(
    [
        (row["path"], f"{row['id']} · {Path(row['path']).name} · group {row.get('group')}")
        for row in items
    ],
    columns=6,
)

st.header("Add images to this index")
st.caption(
    "Upload photos, or give a folder on this server (searched recursively). Files that are "
    "not readable images are listed and left out; the others are encoded with the index's "
    "own model and become searchable at once."
)
with st.form("add_images", clear_on_submit=True):
    uploads = st.file_uploader("Images to add", accept_multiple_files=True)
    folder = st.text_input("Folder on the server")
    submitted = st.form_submit_button("Add to index")
if submitted:
    if not uploads and not folder.strip():
        st.warning("Choose files to upload or type a folder path first.")
    else:
        bar = st.progress(0.0, text="checking files ...")
        result = add_to_index(
            index,
            [(f.name, f.getvalue()) for f in uploads or []],
            folder,
            known_hashes=[row.get("content_hash") for row in live_rows(bundle)],
            progress=lambda fraction, message: bar.progress(fraction, text=message),
        )
        if result.added:
            st.success(f"Added {result.added} images in {result.seconds:.1f} s.")
        if result.skipped:
            st.warning(f"{len(result.skipped)} files were not added:")
            st.dataframe(
                [{"file": name, "reason": reason} for name, reason in result.skipped],
                hide_index=True,
            )
        if result.added:
            st.button("Show the updated gallery")
