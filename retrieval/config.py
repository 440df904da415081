"""Default locations of artifacts (under ``data/``), overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Root of all artifacts: ``$RETRIEVAL_DATA_DIR`` or ``<repo>/data``."""
    return Path(os.environ.get("RETRIEVAL_DATA_DIR", REPO_ROOT / "data")).expanduser()


def feature_cache_dir() -> Path:
    """Where extracted float features are cached: ``$RETRIEVAL_CACHE_DIR`` or ``data/cache``."""
    return Path(os.environ.get("RETRIEVAL_CACHE_DIR", data_dir() / "cache")).expanduser()


def demo_dir() -> Path:
    """Where the embedded demo collection is written."""
    return data_dir() / "demo"


def results_path() -> Path:
    """JSON-lines store of evaluation records that the dashboard reads."""
    return Path(os.environ.get("RETRIEVAL_RESULTS", data_dir() / "results.jsonl")).expanduser()


def ratings_db_path() -> Path:
    """SQLite file of human ratings: ``$RETRIEVAL_RATINGS_DB`` or ``<repo>/ratings.db``."""
    return Path(os.environ.get("RETRIEVAL_RATINGS_DB", REPO_ROOT / "ratings.db")).expanduser()


def models_dir() -> Path:
    """Where trained hash models (model directories) live."""
    return data_dir() / "models"


def indexes_dir() -> Path:
    """Where index bundles live; the app offers every bundle found here."""
    return data_dir() / "indexes"
