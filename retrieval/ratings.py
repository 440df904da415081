"""Human similarity ratings (1-10) in SQLite through SQLAlchemy 2.0 models.

One rating = one rater's score for one result image of one query under one index/model
identity; rating the same (rater, query, result, index identity) again updates the score.
The database itself refuses scores outside 1..10 (a CHECK constraint). Every connection runs
in WAL mode with a busy timeout and foreign keys on; each write is one ``BEGIN IMMEDIATE``
transaction, so concurrent writers (browser tabs, processes) wait for each other instead of
failing or losing rows.

Schema versions live in ``PRAGMA user_version``. Version 1 had no ``index_identity`` and no
``updated_at`` on ``ratings``; opening such a file upgrades it in place (old ratings get the
identity :data:`LEGACY_INDEX_IDENTITY`). Files from a newer or unknown schema are refused
with :class:`RatingsSchemaError`, which names the file and the versions.
"""

from __future__ import annotations

import csv
import io
import operator
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import (
    CheckConstraint,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from retrieval import config
from retrieval.storage import atomic_write

__all__ = [
    "CSV_COLUMNS",
    "LEGACY_INDEX_IDENTITY",
    "SCHEMA_VERSION",
    "Base",
    "InvalidRatingError",
    "QueryImage",
    "QueryRecord",
    "Rater",
    "Rating",
    "RatingRow",
    "RatingsSchemaError",
    "RatingsStore",
    "ResultScore",
    "open_ratings",
]

SCHEMA_VERSION = 2
LEGACY_INDEX_IDENTITY = "unknown (schema v1)"
MIN_SCORE, MAX_SCORE = 1, 10
CSV_COLUMNS = (
    "index_identity",
    "rater",
    "query_hash",
    "query_path",
    "result_id",
    "result_path",
    "rank",
    "distance",
    "score",
    "created_at",
    "updated_at",
)


class RatingsSchemaError(RuntimeError):
    """The file is not a ratings database this version can read (newer, unknown, corrupt)."""


class InvalidRatingError(ValueError):
    """The database refused a rating (score outside 1..10, rank < 1, empty ids...)."""


# --- models -----------------------------------------------------------------------------------


def _utcnow() -> datetime:
    """Naive UTC now: SQLite has no time zones, every stored time is UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of the ratings schema."""


class Rater(Base):
    """A person who rates; identified by a unique name."""

    __tablename__ = "raters"
    __table_args__ = (CheckConstraint("length(trim(name)) > 0", name="ck_raters_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_utcnow)


class QueryImage(Base):
    """A query photo, identified by the hash of its bytes; ``path`` is a stored copy or origin."""

    __tablename__ = "queries"
    __table_args__ = (CheckConstraint("length(content_hash) > 0", name="ck_queries_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(String(4096), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_utcnow)


class Rating(Base):
    """One score 1..10 for one result of one query, by one rater, under one index identity."""

    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint(
            "rater_id", "query_id", "result_id", "index_identity", name="uq_ratings_pair"
        ),
        CheckConstraint(
            f"score BETWEEN {MIN_SCORE} AND {MAX_SCORE} AND score = CAST(score AS INTEGER)",
            name="ck_ratings_score",
        ),
        CheckConstraint("rank >= 1", name="ck_ratings_rank"),
        CheckConstraint("distance IS NULL OR distance >= 0", name="ck_ratings_distance"),
        CheckConstraint("length(result_id) > 0", name="ck_ratings_result_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"))
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id", ondelete="CASCADE"))
    result_id: Mapped[str] = mapped_column(String(200))
    result_path: Mapped[str] = mapped_column(String(4096), default="")
    rank: Mapped[int]
    distance: Mapped[int | None]
    index_identity: Mapped[str] = mapped_column(String(500), index=True)
    score: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=_utcnow)

    rater: Mapped[Rater] = relationship()
    query: Mapped[QueryImage] = relationship()


# --- plain records returned by the store ------------------------------------------------------


@dataclass(frozen=True)
class ResultScore:
    """One scored result of a query page: search rank (1-based), Hamming distance, score."""

    result_id: str | int
    score: int
    rank: int
    distance: int | None = None
    result_path: str = ""


@dataclass(frozen=True)
class RatingRow:
    """A rating joined with its rater and query, as the dashboard and CSV export see it."""

    index_identity: str
    rater: str
    query_hash: str
    query_path: str
    result_id: str
    result_path: str
    rank: int
    distance: int | None
    score: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class QueryRecord:
    """A stored query: content hash, stored copy (or original) path, first-seen time (UTC)."""

    content_hash: str
    path: str
    created_at: datetime


# --- schema versions and migrations ------------------------------------------------------------


def _migrate_1_to_2(conn: Connection) -> None:
    """v1 -> v2: rebuild ``ratings`` with ``index_identity`` (in the unique key) and
    ``updated_at``; old rows get :data:`LEGACY_INDEX_IDENTITY` and ``updated_at = created_at``."""
    conn.exec_driver_sql("ALTER TABLE ratings RENAME TO ratings_v1")
    old_indexes = conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ratings_v1' "
        "AND sql IS NOT NULL"
    ).scalars()
    for name in list(old_indexes):
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    Rating.__table__.create(conn)
    conn.exec_driver_sql(
        "INSERT INTO ratings (id, rater_id, query_id, result_id, result_path, rank, distance,"
        " index_identity, score, created_at, updated_at)"
        " SELECT id, rater_id, query_id, result_id, result_path, rank, distance, ?, score,"
        " created_at, created_at FROM ratings_v1",
        (LEGACY_INDEX_IDENTITY,),
    )
    conn.exec_driver_sql("DROP TABLE ratings_v1")


# MIGRATIONS[v] upgrades a database from version v to v + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_1_to_2}
_OUR_TABLES = {"raters", "queries", "ratings"}


# --- the store ----------------------------------------------------------------------------------


class RatingsStore:
    """Read and write human ratings in one SQLite file; safe to share between threads."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._engine = _make_engine(self.path, busy_timeout_s)
        try:
            found = self._prepare_schema()
        except DatabaseError as exc:
            self._engine.dispose()
            if isinstance(exc, OperationalError):  # locked, unreadable: not a schema problem
                raise
            raise RatingsSchemaError(
                f"{self.path}: cannot be opened as a ratings database ({exc.orig})"
            ) from exc
        except BaseException:
            self._engine.dispose()
            raise
        self.schema_version = SCHEMA_VERSION
        #: The version this file was upgraded from when it was opened, else None.
        self.upgraded_from: int | None = found if 0 < found < SCHEMA_VERSION else None

    # -- lifecycle

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> RatingsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (WAL, busy timeout and foreign keys set on every connection)."""
        return self._engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction, begun IMMEDIATE so writers queue on the busy timeout."""
        with self._engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def _prepare_schema(self) -> int:
        with self._write() as conn:
            version = int(conn.exec_driver_sql("PRAGMA user_version").scalar_one())
            tables = set(inspect(conn).get_table_names())
            if version == 0:
                if tables:
                    raise RatingsSchemaError(
                        f"{self.path}: holds tables {sorted(tables)} but no ratings schema "
                        f"version (user_version 0); this program reads versions 1 to "
                        f"{SCHEMA_VERSION}. Use another file for ratings."
                    )
                Base.metadata.create_all(conn)
            elif version > SCHEMA_VERSION or version not in MIGRATIONS | {SCHEMA_VERSION: None}:
                raise RatingsSchemaError(
                    f"{self.path}: ratings schema version {version} is "
                    f"{'newer than' if version > SCHEMA_VERSION else 'unknown to'} this program "
                    f"(it reads versions 1 to {SCHEMA_VERSION}); upgrade the program or use "
                    "another file."
                )
            elif not tables >= _OUR_TABLES:
                raise RatingsSchemaError(
                    f"{self.path}: schema version {version} but tables "
                    f"{sorted(_OUR_TABLES - tables)} are missing"
                )
            else:
                for step in range(version, SCHEMA_VERSION):
                    MIGRATIONS[step](conn)
            if version != SCHEMA_VERSION:
                conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return version

    # -- writes

    def save_ratings(
        self,
        rater: str,
        query_hash: str,
        query_path: str | Path,
        index_identity: str,
        results: Iterable[ResultScore],
    ) -> int:
        """Save (or update) the scores of one query page in one transaction; returns the count.

        Raises :class:`InvalidRatingError` when the database refuses a value (score outside 1..10).
        """
        rater = rater.strip()
        if not rater:
            raise InvalidRatingError("rater name is empty")
        if not index_identity:
            raise InvalidRatingError("index identity is empty")
        now = _utcnow()
        rows = [
            {
                "result_id": str(r.result_id),
                "result_path": str(r.result_path),
                "rank": _as_int(r.rank),
                "distance": None if r.distance is None else _as_int(r.distance),
                "index_identity": index_identity,
                "score": _as_int(r.score),
                "created_at": now,
                "updated_at": now,
            }
            for r in results
        ]
        if not rows:
            return 0
        try:
            with self._write() as conn:
                rater_id = _get_or_create(conn, Rater, {"name": rater}, {"created_at": now})
                query_id = _get_or_create(
                    conn,
                    QueryImage,
                    {"content_hash": query_hash},
                    {"path": str(query_path), "created_at": now},
                )
                for row in rows:
                    row.update(rater_id=rater_id, query_id=query_id)
                stmt = sqlite_insert(Rating).values(rows)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["rater_id", "query_id", "result_id", "index_identity"],
                    set_={
                        "score": stmt.excluded.score,
                        "rank": stmt.excluded.rank,
                        "distance": stmt.excluded.distance,
                        "result_path": stmt.excluded.result_path,
                        "updated_at": stmt.excluded.updated_at,
                    },
                )
                conn.execute(stmt)
        except IntegrityError as exc:
            raise InvalidRatingError(
                f"rating refused by the database ({exc.orig}); scores must be integers "
                f"{MIN_SCORE}..{MAX_SCORE}, ranks >= 1, distances >= 0"
            ) from exc
        return len(rows)

    def save_rating(
        self,
        rater: str,
        query_hash: str,
        query_path: str | Path,
        result_id: str | int,
        result_path: str | Path,
        rank: int,
        distance: int | None,
        index_identity: str,
        score: int,
    ) -> None:
        """Save one score; re-rating the same (rater, query, result, index) updates it."""
        self.save_ratings(
            rater,
            query_hash,
            query_path,
            index_identity,
            [ResultScore(result_id, score, rank, distance, str(result_path))],
        )

    def add_query(self, query_hash: str, query_path: str | Path) -> QueryRecord:
        """Register a query (no-op if its hash is known: the first path is kept); returns it."""
        with self._write() as conn:
            _get_or_create(
                conn,
                QueryImage,
                {"content_hash": query_hash},
                {"path": str(query_path), "created_at": _utcnow()},
            )
        record = self.query_for_hash(query_hash)
        assert record is not None
        return record

    # -- reads

    def query_for_hash(self, query_hash: str) -> QueryRecord | None:
        """The stored query with this content hash, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(QueryImage.content_hash, QueryImage.path, QueryImage.created_at).where(
                    QueryImage.content_hash == query_hash
                )
            ).first()
        return None if row is None else QueryRecord(row[0], row[1], _aware(row[2]))

    def ratings(
        self, index_identity: str | None = None, *, rater: str | None = None
    ) -> list[RatingRow]:
        """All ratings (optionally of one index identity / rater), ordered for reading."""
        stmt = (
            select(
                Rating.index_identity,
                Rater.name,
                QueryImage.content_hash,
                QueryImage.path,
                Rating.result_id,
                Rating.result_path,
                Rating.rank,
                Rating.distance,
                Rating.score,
                Rating.created_at,
                Rating.updated_at,
            )
            .join(Rater, Rating.rater_id == Rater.id)
            .join(QueryImage, Rating.query_id == QueryImage.id)
            .order_by(
                Rating.index_identity,
                QueryImage.content_hash,
                Rater.name,
                Rating.rank,
                Rating.result_id,
            )
        )
        if index_identity is not None:
            stmt = stmt.where(Rating.index_identity == index_identity)
        if rater is not None:
            stmt = stmt.where(Rater.name == rater.strip())
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            RatingRow(*row[:9], created_at=_aware(row[9]), updated_at=_aware(row[10]))
            for row in rows
        ]

    def scores_for(self, rater: str, query_hash: str, index_identity: str) -> dict[str, int]:
        """This rater's existing scores for a query under an index: result id -> score."""
        stmt = (
            select(Rating.result_id, Rating.score)
            .join(Rater, Rating.rater_id == Rater.id)
            .join(QueryImage, Rating.query_id == QueryImage.id)
            .where(
                Rater.name == rater.strip(),
                QueryImage.content_hash == query_hash,
                Rating.index_identity == index_identity,
            )
        )
        with self._engine.connect() as conn:
            return {result_id: score for result_id, score in conn.execute(stmt)}

    def index_identities(self) -> list[str]:
        """Distinct index/model identities that have ratings, sorted."""
        with self._engine.connect() as conn:
            return list(
                conn.execute(
                    select(Rating.index_identity).distinct().order_by(Rating.index_identity)
                ).scalars()
            )

    def stats(self) -> dict[str, int]:
        """Counts: ratings, raters (with a rating), queries (with a rating), index identities."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(
                    func.count(),
                    func.count(Rating.rater_id.distinct()),
                    func.count(Rating.query_id.distinct()),
                    func.count(Rating.index_identity.distinct()),
                ).select_from(Rating)
            ).one()
        return dict(zip(("ratings", "raters", "queries", "index_identities"), row, strict=True))

    def export_csv(
        self, target: str | Path | TextIO | None = None, *, index_identity: str | None = None
    ) -> str | int:
        """Write the ratings as CSV (:data:`CSV_COLUMNS`, times ISO-8601 UTC).

        ``target`` None returns the text; a path is written atomically (temp file + rename);
        a text stream is written to. Returns the text, or the number of rows written.
        """
        rows = self.ratings(index_identity)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    r.index_identity,
                    r.rater,
                    r.query_hash,
                    r.query_path,
                    r.result_id,
                    r.result_path,
                    r.rank,
                    "" if r.distance is None else r.distance,
                    r.score,
                    r.created_at.isoformat(),
                    r.updated_at.isoformat(),
                ]
            )
        text = buffer.getvalue()
        if target is None:
            return text
        if isinstance(target, str | Path):
            with atomic_write(target, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
        else:
            target.write(text)
        return len(rows)


def open_ratings(path: str | Path | None = None, *, busy_timeout_s: float = 30.0) -> RatingsStore:
    """Open (creating or upgrading) the ratings database; default :func:`config.ratings_db_path`."""
    return RatingsStore(
        config.ratings_db_path() if path is None else path, busy_timeout_s=busy_timeout_s
    )


# --- helpers ------------------------------------------------------------------------------------


def _enable_wal(cursor: Any, timeout_s: float) -> None:
    """Switch the file to WAL, retrying while another connection holds it: SQLite answers a
    journal-mode change under contention with "database is locked" at once, without waiting
    for the busy timeout (seen with two processes creating the database together)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _make_engine(path: Path, busy_timeout_s: float) -> Engine:
    engine = create_engine(
        f"sqlite+pysqlite:///{path}",
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
    )
    timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN (pysqlite's own is deferred and late).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
        _enable_wal(cursor, busy_timeout_s)
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _get_or_create(
    conn: Connection, model: type[Base], key: dict[str, Any], extra: dict[str, Any]
) -> int:
    """Id of the row matching ``key`` (a unique column), inserting it with ``extra`` if new."""
    table = model.__table__
    conn.execute(
        sqlite_insert(table)
        .values({**key, **extra})
        .on_conflict_do_nothing(index_elements=list(key))
    )
    ((column, value),) = key.items()
    return int(conn.execute(select(table.c.id).where(table.c[column] == value)).scalar_one())


def _as_int(value: Any) -> Any:
    """Integers (numpy ones too) as ``int``; anything else unchanged, for the database to judge."""
    if isinstance(value, bool):
        raise InvalidRatingError(f"expected an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        return value


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
