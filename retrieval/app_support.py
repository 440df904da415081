"""What the Streamlit pages do, without Streamlit: queries, blind rating order, tables, gallery.

The pages (``app.py``, ``pages/``) only lay out widgets; everything they compute comes from
here, so it is tested without a browser. Nothing here imports Streamlit.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from retrieval.bundle import MANIFEST, Bundle
from retrieval.config import data_dir, indexes_dir
from retrieval.datasets import load_dataset
from retrieval.datasets.files import IMAGE_EXTENSIONS, list_image_files
from retrieval.human_metrics import HumanSummary
from retrieval.images import ImageLoadError, open_image
from retrieval.ratings import ResultScore
from retrieval.search import Searcher, SearchHit, SearchResponse, add_images
from retrieval.storage import atomic_write, content_hash, content_key

SKIP = "skip"
SCORE_OPTIONS: tuple[str | int, ...] = (SKIP, *range(1, 11))
K_OPTIONS = (5, 10, 15, 20, 30, 50)
# Session-state keys shared by the pages (plain keys, not widget keys: they survive page
# switches, which widget state does not).
INDEX_KEY, K_KEY, QUERY_KEY, RESULTS_KEY = "app_index", "app_k", "app_query", "app_results"
_FORMAT_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def queries_dir() -> Path:
    """Where copies of uploaded query photos are kept (``data/queries/<hash><ext>``)."""
    return data_dir() / "queries"


def uploads_dir() -> Path:
    """Where photos uploaded into an index are kept (``data/uploads/<hash><ext>``)."""
    return data_dir() / "uploads"


# --- indexes --------------------------------------------------------------------------------


def list_bundles(root: Path | None = None) -> list[Path]:
    """Every index bundle directly under ``root`` (default ``indexes_dir()``), sorted by name."""
    root = indexes_dir() if root is None else Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()
    )


def bundle_version(path: str | Path) -> str:
    """Changes whenever the bundle is rewritten (its manifest is replaced): a cache key."""
    try:
        stat = (Path(path) / MANIFEST).stat()
    except OSError:
        return "missing"
    return f"{stat.st_mtime_ns}-{stat.st_size}-{stat.st_ino}"


def live_rows(bundle: Bundle, text: str = "") -> list[dict[str, Any]]:
    """Metadata rows not removed, optionally only those whose path or group contains ``text``."""
    removed, needle = set(bundle.removed), text.strip().lower()
    return [
        row
        for row in bundle.metadata
        if row["id"] not in removed
        and (not needle or needle in f"{row['path']} {row.get('group', '')}".lower())
    ]


def page_of(items: Sequence[Any], page: int, per_page: int) -> tuple[Sequence[Any], int]:
    """Items of the 1-based ``page`` (clamped) and the number of pages (at least 1)."""
    pages = max(1, math.ceil(len(items) / per_page))
    page = min(max(1, page), pages)
    return items[(page - 1) * per_page : page * per_page], pages


def thumbnail(path: str | Path, max_side: int = 320) -> bytes | None:
    """A small JPEG of an image for grids, or None when the file cannot be read."""
    try:
        image = open_image(path, draft_size=max_side)
    except ImageLoadError:
        return None
    image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


# --- queries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredQuery:
    """A query photo: content hash (its identity in ratings), a file to read, where it came from."""

    content_hash: str
    path: Path
    name: str
    source: str  # "upload", "gallery", "dataset"
    box: tuple[float, float, float, float] | None = None


def _keep_copy(data: bytes, name: str, folder: Path) -> tuple[str, Path]:
    """Write ``data`` once to ``folder/<sha256><ext>`` (atomically); returns (hash, path)."""
    digest = hashlib.sha256(data).hexdigest()
    ext = Path(name).suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        with Image.open(io.BytesIO(data)) as image:
            ext = _FORMAT_EXT.get(image.format or "", ".img")
    target = folder / f"{digest}{ext}"
    if not target.is_file():
        with atomic_write(target) as stream:
            stream.write(data)
    return digest, target


def store_upload(name: str, data: bytes, folder: Path | None = None) -> StoredQuery:
    """Check uploaded bytes decode as an image (else :class:`ImageLoadError` with the reason),
    then keep a copy under ``data/queries/<hash><ext>``."""
    open_image(data, name=name)
    digest, path = _keep_copy(data, name, queries_dir() if folder is None else folder)
    return StoredQuery(digest, path, name, "upload")


def query_from_path(
    path: str | Path, source: str = "gallery", box: Sequence[float] | None = None
) -> StoredQuery:
    """A query for an image already on disk; a crop box is part of its identity."""
    box = None if box is None else tuple(float(v) for v in box)
    digest = content_key(content_hash(path), box)
    return StoredQuery(digest, Path(path), Path(path).name, source, box)


def random_gallery_query(bundle: Bundle, rng: np.random.Generator | None = None) -> StoredQuery:
    """A random live image of the index as a query."""
    rows = live_rows(bundle)
    if not rows:
        raise ValueError(f"{bundle.path}: the index holds no images")
    row = rows[int((rng or np.random.default_rng()).integers(len(rows)))]
    return query_from_path(row["path"], "gallery")


def dataset_queries(spec: str) -> list[tuple[str, Path, tuple[float, ...] | None]]:
    """(name, path, crop box) of every query of an evaluation dataset spec; raises DatasetError."""
    dataset = load_dataset(spec)
    return [(q.name, q.path, q.bbox) for q in dataset.queries]


@dataclass
class QueryResults:
    """The search of one query on one index at one k, kept in session state for the Rate page."""

    query: StoredQuery
    bundle: str
    version: str
    identity: str
    k: int
    response: SearchResponse

    @property
    def hits(self) -> list[SearchHit]:
        """The ranked results."""
        return self.response.hits


def results_for(
    state: MutableMapping[str, Any], searcher: Searcher, bundle: str | Path, k: int
) -> QueryResults | None:
    """The current query's results on this index at ``k``: reused from ``state`` when still
    valid, else searched now and stored. None when no query is chosen."""
    query: StoredQuery | None = state.get(QUERY_KEY)
    if query is None:
        return None
    version = bundle_version(bundle)
    cached: QueryResults | None = state.get(RESULTS_KEY)
    key = (query.content_hash, str(bundle), version, k)
    if (
        cached is not None
        and (
            cached.query.content_hash,
            cached.bundle,
            cached.version,
            cached.k,
        )
        == key
    ):
        return cached
    response = searcher.search(query.path, k, box=query.box, name=query.name)
    state[RESULTS_KEY] = QueryResults(query, str(bundle), version, searcher.identity, k, response)
    return state[RESULTS_KEY]


# --- blind rating ---------------------------------------------------------------------------


def blind_order(hits: Sequence[SearchHit], rater: str, query_hash: str) -> list[SearchHit]:
    """The hits shuffled, the same way every time for this rater and query."""
    seed = hashlib.sha256(f"{rater.strip()}\0{query_hash}".encode()).digest()[:8]
    order = np.random.default_rng(int.from_bytes(seed, "big")).permutation(len(hits))
    return [hits[int(i)] for i in order]


def scores_to_save(hits: Iterable[SearchHit], chosen: Mapping[int, Any]) -> list[ResultScore]:
    """ResultScores for the hits given a score (id -> 1..10; skip/None left out), with the
    search's rank and distance."""
    out = []
    for hit in hits:
        value = chosen.get(hit.id)
        if value is None or value == SKIP:
            continue
        out.append(ResultScore(str(hit.id), int(value), hit.rank, hit.distance, hit.path))
    return out


# --- dashboard tables -----------------------------------------------------------------------

RESULT_COLUMNS = ["dataset", "protocol", "method", "bits", "backbone", "mAP"]


def computed_results_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (evaluation record, protocol): dataset, protocol, method, bits, backbone,
    mAP, P@k columns, created; newest first."""
    rows = []
    for record in records:
        for protocol, scores in (record.get("protocols") or {}).items():
            row = {
                "dataset": record.get("dataset"),
                "protocol": protocol,
                "method": record.get("method"),
                "bits": record.get("bits"),
                "backbone": record.get("backbone"),
                "mAP": scores.get("map"),
                "model": (record.get("model") or {}).get("fingerprint"),
                "created": record.get("created", ""),
            }
            for k, value in sorted(
                (scores.get("precision_at_k") or {}).items(), key=lambda kv: int(kv[0])
            ):
                row[f"P@{k}"] = value
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=[*RESULT_COLUMNS, "created"])
    frame = pd.DataFrame(rows)
    frame["bits"] = frame["bits"].astype("Int64")
    return frame.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)


def latest_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Only the newest row of each (dataset, protocol, method, bits, backbone)."""
    keys = ["dataset", "protocol", "method", "bits", "backbone"]
    keys += ["model"] if "model" in frame else []
    return frame.drop_duplicates(subset=keys, keep="first").reset_index(drop=True)


def map_vs_bits(frame: pd.DataFrame) -> pd.DataFrame:
    """mAP (%) indexed by bits, one column per method; bit-less methods (float) drawn flat."""
    if frame.empty:
        return pd.DataFrame()
    latest = latest_runs(frame)
    coded = latest[latest["bits"].notna()]
    bits = sorted(int(b) for b in coded["bits"].unique())
    if not bits:
        return pd.DataFrame()
    table = coded.pivot_table(index="bits", columns="method", values="mAP", aggfunc="first")
    table = table.reindex(bits)
    for _, row in latest[latest["bits"].isna()].iterrows():
        table[row["method"]] = row["mAP"]
    table.index = table.index.astype(int)
    return table * 100


def human_frame(
    summaries: Mapping[str, HumanSummary], computed: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per index identity with every human aggregate, and the computed mAP of the
    same hash model (matched by weight fingerprint, the identity's last part) when known."""
    frame = pd.DataFrame([s.as_dict() for s in summaries.values()])
    if computed is None or computed.empty or "model" not in computed or frame.empty:
        return frame
    latest = latest_runs(computed[computed["model"].notna()])

    def same_model(identity: str) -> str:
        matches = latest[latest["model"] == identity.rsplit(":", 1)[-1]]
        return "; ".join(
            f"{row.dataset} {row.protocol}: {100 * row.mAP:.1f}" for row in matches.itertuples()
        )

    frame["computed mAP (%) of this model"] = [same_model(i) for i in summaries]
    return frame


def score_by_rank_frame(summaries: Mapping[str, HumanSummary]) -> pd.DataFrame:
    """Mean score indexed by search rank, one column per index identity (":" shown as " · ",
    which chart column names cannot hold)."""
    frame = pd.DataFrame(
        {i.replace(":", " · "): pd.Series(s.score_by_rank) for i, s in summaries.items()}
    )
    frame.index.name = "rank"
    return frame.sort_index()


# --- adding images to an index --------------------------------------------------------------


@dataclass
class AddResult:
    """What adding images to an index did: how many were added, which were not and why."""

    added: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def add_to_index(
    bundle_dir: str | Path,
    uploads: Sequence[tuple[str, bytes]] = (),
    folder: str | Path | None = None,
    *,
    known_hashes: Iterable[str] = (),
    progress: Callable[[float, str], None] | None = None,
) -> AddResult:
    """Add uploaded files (kept under ``data/uploads/``) and a server folder's images (recursive)
    to a bundle in one update, reporting ``progress(fraction, text)``; bad files are listed."""
    start = time.perf_counter()
    result = AddResult()
    say = progress or (lambda _fraction, _text: None)
    known = set(known_hashes)
    paths: list[Path] = []
    for name, data in uploads:
        try:
            open_image(data, name=name)
            digest, path = _keep_copy(data, name, uploads_dir())
        except (ImageLoadError, OSError) as error:
            result.skipped.append((name, getattr(error, "reason", str(error))))
            continue
        if digest in known:
            result.skipped.append((name, "already in the index"))
        else:
            known.add(digest)
            paths.append(path)
    if folder is not None and str(folder).strip():
        root = Path(str(folder).strip()).expanduser()
        if not root.is_dir():
            result.skipped.append((str(root), "no such folder on the server"))
        else:
            for path in list_image_files(root, recursive=True):
                digest = content_hash(path)
                if digest in known:
                    result.skipped.append((str(path), "already in the index"))
                else:
                    known.add(digest)
                    paths.append(path)
    say(0.0, f"{len(paths)} images to encode")
    if paths:
        report = add_images(
            bundle_dir,
            paths,
            progress=False,
            on_progress=lambda done, total: say(done / total, f"{done} / {total} images encoded"),
        )
        result.added += report.added
        result.skipped += [(str(p), str(reason)) for p, reason in report.skipped]
    say(1.0, f"done: {result.added} added, {len(result.skipped)} not added")
    result.seconds = time.perf_counter() - start
    return result
