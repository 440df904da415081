"""The SQLite ratings store: constraints, upsert, WAL, concurrency, schema versions, CSV."""

from __future__ import annotations

import csv
import io
import multiprocessing
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.exc import IntegrityError

from retrieval import config
from retrieval.ratings import (
    CSV_COLUMNS,
    LEGACY_INDEX_IDENTITY,
    SCHEMA_VERSION,
    InvalidRatingError,
    RatingsSchemaError,
    ResultScore,
    open_ratings,
)

IDX = "demo/efficientnet_lite0/itq-64"


@pytest.fixture
def store(tmp_path):
    with open_ratings(tmp_path / "ratings.db") as s:
        yield s


def rate(store, rater="ann", query="h1", result="7", score=5, index=IDX, rank=1, distance=3):
    store.save_rating(rater, query, f"/q/{query}.jpg", result, f"/img/{result}.jpg", rank,
                      distance, index, score)  # fmt: skip


# --- paths and connection settings ---------------------------------------------------------------


def test_default_path_honours_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("RETRIEVAL_RATINGS_DB", raising=False)
    assert config.ratings_db_path() == config.REPO_ROOT / "ratings.db"
    monkeypatch.setenv("RETRIEVAL_RATINGS_DB", str(tmp_path / "sub" / "r.db"))
    with open_ratings() as s:
        assert s.path == tmp_path / "sub" / "r.db"
        assert s.schema_version == SCHEMA_VERSION and s.upgraded_from is None
    assert (tmp_path / "sub" / "r.db").exists()


def test_every_connection_has_wal_busy_timeout_and_foreign_keys(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    raw = sqlite3.connect(store.path)  # WAL is a property of the file, seen by anyone
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()


# --- constraints ------------------------------------------------------------------------------


def test_check_constraint_refuses_scores_outside_1_to_10_in_raw_sql(store):
    rate(store, score=5)  # creates rater 1 and query 1
    raw = sqlite3.connect(store.path)
    insert = (
        "INSERT INTO ratings (rater_id, query_id, result_id, result_path, rank, distance,"
        " index_identity, score, created_at, updated_at)"
        " VALUES (1, 1, ?, '', 1, 0, 'x', ?, '2024-01-01 00:00:00', '2024-01-01 00:00:00')"
    )
    for bad in (0, 11, -3, 5.5, "high"):
        with pytest.raises(sqlite3.IntegrityError, match="ck_ratings_score"):
            raw.execute(insert, (f"bad{bad}", bad))
    raw.execute(insert, ("ok1", 1))
    raw.execute(insert, ("ok10", 10))
    raw.commit()
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        raw.execute("PRAGMA foreign_keys = ON")
        raw.execute(insert.replace("(1, 1,", "(99, 1,"), ("fk", 5))
    raw.close()
    # The same through SQLAlchemy's connection, bypassing the ORM.
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.exec_driver_sql(insert, ("sa", 11))
    assert store.stats()["ratings"] == 3


def test_store_reports_refused_scores_and_keeps_batches_atomic(store):
    with pytest.raises(InvalidRatingError, match=r"1\.\.10"):
        rate(store, score=11)
    with pytest.raises(InvalidRatingError):
        rate(store, score=True)
    batch = [ResultScore("a", 7, 1, 0), ResultScore("b", 0, 2, 1)]  # one bad score
    with pytest.raises(InvalidRatingError):
        store.save_ratings("ann", "h1", "/q.jpg", IDX, batch)
    assert store.stats()["ratings"] == 0
    with pytest.raises(InvalidRatingError, match="rater"):
        rate(store, rater="  ")
    # numpy integers (e.g. from a search result) are accepted.
    store.save_ratings("ann", "h1", "/q.jpg", IDX, [ResultScore(np.int64(4), np.int32(9), 1)])
    assert store.scores_for("ann", "h1", IDX) == {"4": 9}


# --- upsert ------------------------------------------------------------------------------------


def test_re_rating_updates_instead_of_adding_a_row(store):
    rate(store, score=4)
    (first,) = store.ratings()
    rate(store, score=9, rank=2, distance=5)
    (second,) = store.ratings()
    assert (second.score, second.rank, second.distance) == (9, 2, 5)
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    # Another rater, result or index identity is another rating.
    rate(store, rater="bob", score=2)
    rate(store, result="8", score=3)
    rate(store, index="other-index", score=6)
    assert store.stats() == {"ratings": 4, "raters": 2, "queries": 1, "index_identities": 2}
    assert store.scores_for("ann", "h1", IDX) == {"7": 9, "8": 3}
    assert store.index_identities() == [IDX, "other-index"]
    assert [r.score for r in store.ratings("other-index")] == [6]
    assert [r.rater for r in store.ratings(rater="bob")] == ["bob"]


def test_queries_are_kept_by_content_hash(store):
    assert store.query_for_hash("nope") is None
    record = store.add_query("h1", "/stored/h1.jpg")
    assert (record.content_hash, record.path) == ("h1", "/stored/h1.jpg")
    rate(store, query="h1")  # another path for the same bytes: the first one is kept
    assert store.query_for_hash("h1").path == "/stored/h1.jpg"
    assert isinstance(store.query_for_hash("h1").created_at, datetime)
    assert store.ratings()[0].query_path == "/stored/h1.jpg"


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_export_content(store, tmp_path):
    rate(store, rater="bob", query="h2", result="3", score=2, rank=2, distance=9)
    rate(store, rater="ann", query="h2", result="1", score=10, rank=1, distance=None)
    text = store.export_csv()
    lines = text.splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [{k: r[k] for k in CSV_COLUMNS[:9]} for r in rows] == [
        {"index_identity": IDX, "rater": "ann", "query_hash": "h2", "query_path": "/q/h2.jpg",
         "result_id": "1", "result_path": "/img/1.jpg", "rank": "1", "distance": "",
         "score": "10"},
        {"index_identity": IDX, "rater": "bob", "query_hash": "h2", "query_path": "/q/h2.jpg",
         "result_id": "3", "result_path": "/img/3.jpg", "rank": "2", "distance": "9",
         "score": "2"},
    ]  # fmt: skip
    for r in rows:
        assert datetime.fromisoformat(r["created_at"]).utcoffset().total_seconds() == 0
    out = tmp_path / "export.csv"
    assert store.export_csv(out) == 2
    assert out.read_text() == text
    buffer = io.StringIO()
    assert store.export_csv(buffer, index_identity="none") == 0
    assert buffer.getvalue().splitlines() == [",".join(CSV_COLUMNS)]


# --- concurrency -------------------------------------------------------------------------------


N_EACH = 150


def _write_many(path: str, rater: str, n: int, barrier=None) -> None:
    with open_ratings(path, busy_timeout_s=60) as s:
        if barrier is not None:
            barrier.wait()
        for i in range(n):
            s.save_rating(rater, f"q{i % 7}", "", str(i), "", 1 + i % 10, i % 64, IDX, 1 + i % 10)
            # Everyone also hammers one shared pair: it must stay a single row.
            s.save_rating("shared", "q0", "", "0", "", 1, 0, IDX, 1 + i % 10)


def test_two_threads_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "r.db"
    barrier = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def work(rater: str) -> None:
        try:
            _write_many(str(path), rater, N_EACH, barrier)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    with open_ratings(path) as s:
        assert s.stats()["ratings"] == 2 * N_EACH + 1
        for name in ("t1", "t2"):
            assert len(s.ratings(rater=name)) == N_EACH


def test_one_store_shared_by_threads(store):
    def work(rater: str) -> None:
        for i in range(N_EACH):
            rate(store, rater=rater, result=str(i), score=1 + i % 10)

    threads = [threading.Thread(target=work, args=(f"r{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert store.stats()["ratings"] == 3 * N_EACH


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "r.db"  # both processes also create the schema at the same moment
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2, timeout=30)
    procs = [
        ctx.Process(target=_write_many, args=(str(path), name, N_EACH, barrier))
        for name in ("p1", "p2")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    with open_ratings(path) as s:
        assert s.stats()["ratings"] == 2 * N_EACH + 1
        assert {r.rater for r in s.ratings()} == {"p1", "p2", "shared"}
        assert len(s.ratings(rater="p2")) == N_EACH


# --- schema versions ----------------------------------------------------------------------------

# The schema as the first release wrote it: no index_identity, no updated_at.
SCHEMA_V1 = """
CREATE TABLE raters (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL UNIQUE,
    created_at DATETIME NOT NULL, CONSTRAINT ck_raters_name CHECK (length(trim(name)) > 0));
CREATE TABLE queries (id INTEGER PRIMARY KEY, content_hash VARCHAR(128) NOT NULL UNIQUE,
    path VARCHAR(4096) NOT NULL, created_at DATETIME NOT NULL,
    CONSTRAINT ck_queries_hash CHECK (length(content_hash) > 0));
CREATE TABLE ratings (id INTEGER PRIMARY KEY,
    rater_id INTEGER NOT NULL REFERENCES raters (id) ON DELETE CASCADE,
    query_id INTEGER NOT NULL REFERENCES queries (id) ON DELETE CASCADE,
    result_id VARCHAR(200) NOT NULL, result_path VARCHAR(4096) NOT NULL,
    rank INTEGER NOT NULL, distance INTEGER, score INTEGER NOT NULL,
    created_at DATETIME NOT NULL,
    UNIQUE (rater_id, query_id, result_id),
    CHECK (score BETWEEN 1 AND 10));
CREATE INDEX ix_ratings_rater ON ratings (rater_id);
INSERT INTO raters VALUES (1, 'ann', '2023-05-01 10:00:00.000000');
INSERT INTO queries VALUES (1, 'h1', '/q/h1.jpg', '2023-05-01 10:00:00.000000');
INSERT INTO ratings VALUES (1, 1, 1, '7', '/img/7.jpg', 1, 3, 8, '2023-05-01 10:01:00.000000');
INSERT INTO ratings VALUES (2, 1, 1, '9', '/img/9.jpg', 2, 6, 2, '2023-05-01 10:02:00.000000');
PRAGMA user_version = 1;
"""


def _raw_db(path: Path, script: str) -> None:
    raw = sqlite3.connect(path)
    raw.executescript(script)
    raw.commit()
    raw.close()


def test_version_1_database_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.db"
    _raw_db(path, SCHEMA_V1)
    with open_ratings(path) as s:
        assert s.upgraded_from == 1 and s.schema_version == SCHEMA_VERSION
        old = s.ratings()
        assert [(r.result_id, r.score, r.rank, r.distance) for r in old] == [
            ("7", 8, 1, 3),
            ("9", 2, 2, 6),
        ]
        assert {r.index_identity for r in old} == {LEGACY_INDEX_IDENTITY}
        assert all(r.updated_at == r.created_at for r in old)
        assert old[0].created_at.isoformat() == "2023-05-01T10:01:00+00:00"
        # The new unique key includes the index identity; the old rows upsert as before.
        rate(s, result="7", score=5)
        rate(s, result="7", score=10, index=LEGACY_INDEX_IDENTITY)
        assert s.stats()["ratings"] == 3
        assert s.scores_for("ann", "h1", LEGACY_INDEX_IDENTITY) == {"7": 10, "9": 2}
        with pytest.raises(InvalidRatingError):
            rate(s, score=0)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    assert raw.execute("SELECT name FROM sqlite_master WHERE name LIKE '%v1%'").fetchall() == []
    raw.close()
    with open_ratings(path) as s:  # a second open has nothing to upgrade
        assert s.upgraded_from is None and s.stats()["ratings"] == 3


def test_newer_schema_is_refused_with_file_and_versions(tmp_path):
    path = tmp_path / "future.db"
    with open_ratings(path) as s:
        rate(s)
    _raw_db(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RatingsSchemaError) as info:
        open_ratings(path)
    message = str(info.value)
    assert str(path) in message and "newer" in message
    assert f"version {SCHEMA_VERSION + 1}" in message and f"1 to {SCHEMA_VERSION}" in message
    raw = sqlite3.connect(path)  # refused means untouched
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert raw.execute("SELECT count(*) FROM ratings").fetchone()[0] == 1
    raw.close()


def test_unknown_databases_are_refused(tmp_path):
    foreign = tmp_path / "foreign.db"
    _raw_db(foreign, "CREATE TABLE photos (id INTEGER PRIMARY KEY);")
    with pytest.raises(RatingsSchemaError, match="no ratings schema version"):
        open_ratings(foreign)
    broken = tmp_path / "broken.db"
    _raw_db(broken, "CREATE TABLE raters (id INTEGER PRIMARY KEY); PRAGMA user_version = 1;")
    with pytest.raises(RatingsSchemaError, match="missing"):
        open_ratings(broken)
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("these are not the ratings you are looking for\n" * 100)
    with pytest.raises(RatingsSchemaError, match=r"notes\.db"):
        open_ratings(not_sqlite)


def test_orm_models_read_back_with_relationships(store):
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from retrieval.ratings import Rating

    rate(store, rater="ann", query="h1", result="7", score=7)
    with Session(store.engine) as session:
        rating = session.scalars(select(Rating)).one()
        assert (rating.rater.name, rating.query.content_hash, rating.score) == ("ann", "h1", 7)
        assert rating.index_identity == IDX and rating.updated_at >= rating.created_at
