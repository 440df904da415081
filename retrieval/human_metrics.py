"""Aggregates of human 1-10 similarity ratings for the dashboard; pure functions over rows.

A row is a :class:`retrieval.ratings.RatingRow` or any mapping with the same keys
(``index_identity, rater, query_hash, result_id, rank, distance, score``), e.g. a CSV export.
A *session* is one rater's ratings of one query under one index identity. Per-query metrics
(precision@k, nDCG@k) are computed per session, averaged over a query's raters, then over
queries, so every query weighs the same however many people rated it. Results a rater
skipped are left out (unknown), not counted as misses. Empty input gives ``nan``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy.stats import spearmanr

from retrieval.metrics import ndcg_at_k as _ndcg_at_k

__all__ = [
    "DEFAULT_K",
    "DEFAULT_THRESHOLD",
    "Agreement",
    "HumanSummary",
    "counts",
    "human_ndcg_at_k",
    "human_precision_at_k",
    "krippendorff_alpha",
    "mean_score",
    "mean_score_by_rank",
    "rater_agreement",
    "spearman_score_distance",
    "summarize",
]

DEFAULT_THRESHOLD = 6
DEFAULT_K = 10


class _Row(NamedTuple):
    index_identity: str
    rater: str
    query_hash: str
    result_id: str
    rank: int
    distance: float | None
    score: float


def _normalise(rows: Iterable[Any]) -> list[_Row]:
    out = []
    for row in rows:
        get = row.get if isinstance(row, Mapping) else lambda name, r=row: getattr(r, name)
        distance = get("distance")
        out.append(
            _Row(
                str(get("index_identity")),
                str(get("rater")),
                str(get("query_hash")),
                str(get("result_id")),
                int(get("rank")),
                None if distance in (None, "") else float(distance),
                float(get("score")),
            )
        )
    return out


def _per_query_mean(values: Mapping[tuple[str, str, str], float]) -> float:
    """Average session values over each query's raters, then over queries (nan skipped)."""
    by_query: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (identity, query, _rater), value in values.items():
        if not math.isnan(value):
            by_query[identity, query].append(value)
    means = [float(np.mean(v)) for v in by_query.values()]
    return float(np.mean(means)) if means else math.nan


def _sessions(rows: list[_Row]) -> dict[tuple[str, str, str], list[_Row]]:
    """(index identity, query, rater) -> that rater's ratings of the query, by search rank."""
    sessions: dict[tuple[str, str, str], list[_Row]] = defaultdict(list)
    for row in rows:
        sessions[row.index_identity, row.query_hash, row.rater].append(row)
    return {key: sorted(v, key=lambda r: (r.rank, r.result_id)) for key, v in sessions.items()}


# --- aggregates -------------------------------------------------------------------------------


def counts(rows: Iterable[Any]) -> dict[str, int]:
    """Numbers of ratings, raters, queries and distinct (query, result) pairs rated."""
    data = _normalise(rows)
    return {
        "ratings": len(data),
        "raters": len({r.rater for r in data}),
        "queries": len({(r.index_identity, r.query_hash) for r in data}),
        "pairs": len({(r.index_identity, r.query_hash, r.result_id) for r in data}),
    }


def mean_score(rows: Iterable[Any]) -> float:
    """Mean score over all ratings (each rating counts once); nan without ratings."""
    scores = [r.score for r in _normalise(rows)]
    return float(np.mean(scores)) if scores else math.nan


def mean_score_by_rank(rows: Iterable[Any]) -> dict[int, float]:
    """Search rank (1-based) -> mean score of every rating given to a result at that rank."""
    by_rank: dict[int, list[float]] = defaultdict(list)
    for r in _normalise(rows):
        by_rank[r.rank].append(r.score)
    return {rank: float(np.mean(by_rank[rank])) for rank in sorted(by_rank)}


def human_precision_at_k(
    rows: Iterable[Any], k: int = DEFAULT_K, threshold: float = DEFAULT_THRESHOLD
) -> float:
    """Per session, the fraction of its rated results at rank <= k scoring >= threshold;
    averaged over raters then queries. Sessions with nothing rated in the top k are skipped."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    values = {}
    for key, session in _sessions(_normalise(rows)).items():
        top = [r.score for r in session if r.rank <= k]
        values[key] = sum(s >= threshold for s in top) / len(top) if top else math.nan
    return _per_query_mean(values)


def human_ndcg_at_k(rows: Iterable[Any], k: int = DEFAULT_K) -> float:
    """Per session, nDCG@k of the scores (gain = score) in search order against the same
    scores sorted best first (:func:`retrieval.metrics.ndcg_at_k`); averaged as precision.

    It measures the ordering only: a list scored all 1s is as "ideal" as one scored all 10s.
    """
    values = {
        key: _ndcg_at_k([r.score for r in session], k)
        for key, session in _sessions(_normalise(rows)).items()
    }
    return _per_query_mean(values)


def spearman_score_distance(rows: Iterable[Any]) -> float:
    """Spearman's rho between Hamming distance and score, pooled over ratings with a distance
    (ties get average ranks). Negative when closer codes look more similar; nan if constant."""
    pairs = [(r.distance, r.score) for r in _normalise(rows) if r.distance is not None]
    if len(pairs) < 2:
        return math.nan
    distances, scores = (np.asarray(v, dtype=np.float64) for v in zip(*pairs, strict=True))
    if np.all(distances == distances[0]) or np.all(scores == scores[0]):
        return math.nan
    return float(spearmanr(distances, scores).statistic)


def krippendorff_alpha(
    units: Iterable[Sequence[float]], metric: Literal["interval", "nominal"] = "interval"
) -> float:
    """Krippendorff's alpha from the values each unit received (missing ratings simply absent).

    ``1 - D_o / D_e`` over pairable values (units with >= 2 values); nan if no variation.
    """
    pairable = [np.asarray(u, dtype=np.float64) for u in units if len(u) >= 2]
    if not pairable:
        return math.nan
    if metric == "interval":

        def delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return (a[:, None] - b[None, :]) ** 2
    elif metric == "nominal":

        def delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return (a[:, None] != b[None, :]).astype(np.float64)
    else:
        raise ValueError(f"metric must be 'interval' or 'nominal', got {metric!r}")
    values = np.concatenate(pairable)
    n = values.size
    # Sums over ordered pairs i != j (the diagonal has delta 0 for both metrics).
    observed = sum(delta(u, u).sum() / (u.size - 1) for u in pairable) / n
    expected = delta(values, values).sum() / (n * (n - 1))
    return float(1 - observed / expected) if expected > 0 else math.nan


@dataclass(frozen=True)
class Agreement:
    """Agreement between raters on (query, result) pairs scored by more than one rater."""

    items: int  # pairs rated by >= 2 raters
    rater_pairs: int  # unordered pairs of raters over those items
    mean_abs_diff: float  # mean |score_a - score_b| over rater pairs
    relevance_agreement: float  # fraction of rater pairs on the same side of the threshold
    alpha: float  # Krippendorff's alpha, interval metric, over those items


def rater_agreement(rows: Iterable[Any], threshold: float = DEFAULT_THRESHOLD) -> Agreement:
    """:class:`Agreement` on the (index, query, result) pairs rated by two or more raters."""
    items: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in _normalise(rows):
        items[r.index_identity, r.query_hash, r.result_id].append(r.score)
    shared = [scores for scores in items.values() if len(scores) >= 2]
    diffs, agree = [], []
    for scores in shared:
        for a, b in combinations(scores, 2):
            diffs.append(abs(a - b))
            agree.append((a >= threshold) == (b >= threshold))
    return Agreement(
        items=len(shared),
        rater_pairs=len(diffs),
        mean_abs_diff=float(np.mean(diffs)) if diffs else math.nan,
        relevance_agreement=float(np.mean(agree)) if agree else math.nan,
        alpha=krippendorff_alpha(shared, "interval"),
    )


@dataclass(frozen=True)
class HumanSummary:
    """Every human aggregate of one index/model identity."""

    index_identity: str
    k: int
    threshold: float
    ratings: int
    raters: int
    queries: int
    mean_score: float
    precision_at_k: float
    ndcg_at_k: float
    spearman: float
    agreement: Agreement
    score_by_rank: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Flat dict for a table row (agreement fields prefixed, score by rank left out)."""
        out = asdict(self)
        out.pop("score_by_rank")
        for name, value in out.pop("agreement").items():
            out[f"agreement_{name}"] = value
        return out


def summarize(
    rows: Iterable[Any], k: int = DEFAULT_K, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, HumanSummary]:
    """Index identity -> :class:`HumanSummary` of its ratings, identities sorted."""
    groups: dict[str, list[_Row]] = defaultdict(list)
    for r in _normalise(rows):
        groups[r.index_identity].append(r)
    out = {}
    for identity in sorted(groups):
        data = groups[identity]
        c = counts(data)
        out[identity] = HumanSummary(
            index_identity=identity,
            k=k,
            threshold=threshold,
            ratings=c["ratings"],
            raters=c["raters"],
            queries=c["queries"],
            mean_score=mean_score(data),
            precision_at_k=human_precision_at_k(data, k, threshold),
            ndcg_at_k=human_ndcg_at_k(data, k),
            spearman=spearman_score_distance(data),
            agreement=rater_agreement(data, threshold),
            score_by_rank=mean_score_by_rank(data),
        )
    return out
