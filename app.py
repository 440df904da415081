"""Binary-code image retrieval: the web app. Start with ``streamlit run app.py`` (``make run``).

Every page that needs an index says what to run when none exists yet (the app never trains).
"""

import streamlit as st

st.set_page_config(page_title="Image retrieval", page_icon="🔎", layout="wide")

page = st.navigation(
    [
        st.Page("pages/search.py", title="Search", icon="🔎", default=True),
        st.Page("pages/rate.py", title="Rate", icon="⭐"),
        st.Page("pages/dashboard.py", title="Dashboard", icon="📊"),
        st.Page("pages/gallery.py", title="Gallery", icon="🖼️"),
    ]
)
page.run()
