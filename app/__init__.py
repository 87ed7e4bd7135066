"""The dermlow review app (Streamlit). Installed as the package `dermlow._app` (see pyproject.toml),
so its views import as `dermlow._app.review_*`; `dermlow app` serves `streamlit_app.py`."""
