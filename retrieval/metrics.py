"""Retrieval metrics: the public protocols' AP, plain AP, precision/recall/AP at k, nDCG.

Conventions shared by every function here:

* A ranking is a sequence of database ids, best first. Ids may be any hashable value; an
  integer ``numpy`` array takes a vectorised path. Ids in one ranking are assumed unique.
* Junk ids are removed from the ranking before anything is counted: they are neither
  positive nor negative. An id that is both positive and junk is treated as junk only, so
  it is not counted in the number of positives either (the Oxford C++ scorer would keep it
  in the count and make AP = 1 unreachable; none of our loaders produce such overlaps).
* Positives that never appear in the ranking (e.g. a truncated top-k list) add nothing.
* A query without positives has no defined AP: the AP functions return ``nan``, and
  :func:`mean_average_precision` skips ``nan`` values, as the public protocols skip such
  queries.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "average_precision",
    "average_precision_at_k",
    "average_precisions",
    "map_at_k",
    "mean_average_precision",
    "ndcg_at_k",
    "plain_average_precision",
    "precision_at_k",
    "recall_at_k",
]


# --- core: positive ranks in the junk-free ranking ---------------------------------------


def _is_int_array(values: Any) -> bool:
    return isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.integer)


def _as_int_array(ids: Iterable[Any]) -> np.ndarray:
    if isinstance(ids, np.ndarray):
        return ids.ravel()
    return np.fromiter(ids, dtype=np.int64)


def _all_ints(ids: Collection[Any]) -> bool:
    if isinstance(ids, np.ndarray):
        return _is_int_array(ids) or ids.size == 0
    return all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in ids)


def _positive_ranks(
    ranked_ids: Sequence[Any] | np.ndarray,
    positive_ids: Collection[Any],
    junk_ids: Collection[Any],
) -> tuple[np.ndarray, int]:
    """Return (sorted 0-based ranks of the positives in the junk-free ranking, n_pos)."""
    if _is_int_array(ranked_ids) and _all_ints(positive_ids) and _all_ints(junk_ids):
        ranking = np.asarray(ranked_ids).ravel()
        positives = _as_int_array(positive_ids)
        junk = _as_int_array(junk_ids)
        if junk.size:
            positives = np.setdiff1d(positives, junk)
            ranking = ranking[~np.isin(ranking, junk)]
        else:
            positives = np.unique(positives)
        ranks = np.flatnonzero(np.isin(ranking, positives))
        n_pos = int(positives.size)
    else:
        junk_set = set(junk_ids)
        positive_set = set(positive_ids) - junk_set
        found: list[int] = []
        rank = 0
        for item in ranked_ids:
            if item in junk_set:
                continue
            if item in positive_set:
                found.append(rank)
            rank += 1
        ranks = np.asarray(found, dtype=np.int64)
        n_pos = len(positive_set)
    if ranks.size > n_pos:
        raise ValueError("ranking lists a positive more than once; ids must be unique")
    return ranks, n_pos


def _ap_from_ranks(ranks: np.ndarray, n_pos: int, *, trapezoid: bool) -> float:
    """AP from the sorted ranks of the found positives (0-based, junk-free)."""
    if n_pos == 0:
        return math.nan
    if ranks.size == 0:
        return 0.0
    r = ranks.astype(np.float64)
    i = np.arange(ranks.size, dtype=np.float64)
    precision_after = (i + 1) / (r + 1)  # precision including the i-th positive
    if not trapezoid:
        return float(precision_after.sum() / n_pos)
    # Precision just before the i-th positive; at rank 0 the public code uses 1.
    precision_before = np.divide(i, r, out=np.ones_like(r), where=r > 0)
    return float(((precision_before + precision_after) / 2).sum() / n_pos)


# --- AP ---------------------------------------------------------------------------------


def average_precision(
    ranked_ids: Sequence[Any] | np.ndarray,
    positive_ids: Collection[Any],
    junk_ids: Collection[Any] = (),
) -> float:
    """The Oxford / Revisited / Holidays trapezoidal AP (DESIGN.md section 4).

    The i-th positive (0-based) at rank r of the junk-free ranking adds
    ``((i / r if r > 0 else 1) + (i + 1) / (r + 1)) / 2 / n_pos``. ``nan`` without positives.
    """
    ranks, n_pos = _positive_ranks(ranked_ids, positive_ids, junk_ids)
    return _ap_from_ranks(ranks, n_pos, trapezoid=True)


def plain_average_precision(
    ranked_ids: Sequence[Any] | np.ndarray,
    positive_ids: Collection[Any],
    junk_ids: Collection[Any] = (),
) -> float:
    """Non-interpolated AP: mean over all positives of the precision at each one's rank.

    Same junk handling as :func:`average_precision`, never below it; ``nan`` without positives.
    """
    ranks, n_pos = _positive_ranks(ranked_ids, positive_ids, junk_ids)
    return _ap_from_ranks(ranks, n_pos, trapezoid=False)


def average_precisions(
    rankings: np.ndarray | Sequence[np.ndarray],
    positives: Sequence[Collection[int]],
    junk: Sequence[Collection[int]] | None = None,
    *,
    trapezoid: bool = True,
) -> np.ndarray:
    """APs of many queries at once from integer rankings (e.g. ``np.argsort`` rows).

    ``rankings[q]`` lists database indices best first (a full ranking or a top-k prefix);
    ``positives[q]`` / ``junk[q]`` are index collections. Loops over queries only; ``nan``
    for queries without positives. ``trapezoid=False`` gives plain AP. From a matrix holding
    each database image's rank, pass ``np.argsort(ranks, axis=1, kind="stable")``.
    """
    n_queries = len(rankings)
    if len(positives) != n_queries or (junk is not None and len(junk) != n_queries):
        raise ValueError(
            f"{n_queries} rankings but {len(positives)} positive sets"
            + ("" if junk is None else f" and {len(junk)} junk sets")
        )
    aps = np.empty(n_queries, dtype=np.float64)
    for q in range(n_queries):
        ranking = np.asarray(rankings[q])
        if not np.issubdtype(ranking.dtype, np.integer):
            raise TypeError(f"ranking {q} must hold integer indices, got {ranking.dtype}")
        ranks, n_pos = _positive_ranks(ranking, positives[q], () if junk is None else junk[q])
        aps[q] = _ap_from_ranks(ranks, n_pos, trapezoid=trapezoid)
    return aps


def mean_average_precision(aps: Iterable[float]) -> float:
    """Mean of per-query APs, skipping ``nan`` (queries without positives); ``nan`` if none."""
    values = np.asarray(list(aps), dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


# --- cut-off metrics ----------------------------------------------------------------------


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def precision_at_k(
    ranked_ids: Sequence[Any] | np.ndarray,
    positive_ids: Collection[Any],
    k: int,
    junk_ids: Collection[Any] = (),
) -> float:
    """Fraction of the first k (junk-free) results that are positive.

    Always divided by k: a ranking shorter than k counts its missing places as misses.
    """
    _check_k(k)
    ranks, _ = _positive_ranks(ranked_ids, positive_ids, junk_ids)
    return int(np.count_nonzero(ranks < k)) / k


def recall_at_k(
    ranked_ids: Sequence[Any] | np.ndarray,
    positive_ids: Collection[Any],
    k: int,
    junk_ids: Collection[Any] = (),
) -> float:
    """Fraction of all positives found in the first k (junk-free) results; ``nan`` if none."""
    _check_k(k)
    ranks, n_pos = _positive_ranks(ranked_ids, positive_ids, junk_ids)
    return int(np.count_nonzero(ranks < k)) / n_pos if n_pos else math.nan


def average_precision_at_k(
    ranked_ids: Sequence[Any] | np.ndarray,
    positive_ids: Collection[Any],
    k: int,
    junk_ids: Collection[Any] = (),
) -> float:
    """AP@k: sum of precision@(r+1) over positives at ranks r < k, divided by min(k, n_pos).

    Dividing by min(k, n_pos) makes 1.0 reachable when there are more positives than k;
    with k >= n_pos it equals :func:`plain_average_precision`. ``nan`` without positives.
    """
    _check_k(k)
    ranks, n_pos = _positive_ranks(ranked_ids, positive_ids, junk_ids)
    if n_pos == 0:
        return math.nan
    top = ranks[ranks < k].astype(np.float64)
    return float((np.arange(1, top.size + 1) / (top + 1)).sum() / min(k, n_pos))


def map_at_k(
    rankings: Sequence[Sequence[Any] | np.ndarray],
    positives: Sequence[Collection[Any]],
    k: int,
    junk: Sequence[Collection[Any]] | None = None,
) -> float:
    """Mean of :func:`average_precision_at_k` over queries, skipping those without positives."""
    if len(rankings) != len(positives):
        raise ValueError(f"{len(rankings)} rankings but {len(positives)} positive sets")
    junk_sets: Sequence[Collection[Any]] = junk if junk is not None else [()] * len(rankings)
    return mean_average_precision(
        average_precision_at_k(r, p, k, j)
        for r, p, j in zip(rankings, positives, junk_sets, strict=True)
    )


# --- graded relevance -----------------------------------------------------------------------


def _gain(grades: np.ndarray, gain: Literal["linear", "exponential"]) -> np.ndarray:
    if gain == "linear":
        return grades
    if gain == "exponential":
        return np.exp2(grades) - 1
    raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")


def _dcg(gains: np.ndarray) -> float:
    return float((gains / np.log2(np.arange(2, gains.size + 2))).sum())


def ndcg_at_k(
    ranked: Sequence[Any] | np.ndarray,
    k: int,
    grades: Mapping[Any, float] | None = None,
    *,
    gain: Literal["linear", "exponential"] = "linear",
) -> float:
    """nDCG@k with graded relevance and the log2(rank + 2) discount (0-based rank).

    Either ``ranked`` holds the grades themselves in rank order (the ideal ordering is then
    those same grades sorted), or it holds ids and ``grades`` maps id -> grade (ids missing
    from the map grade 0; the ideal ordering uses every grade in the map, so relevant items
    absent from the ranking lower the score). ``gain="linear"`` uses the grade as gain,
    which suits the 1-10 human ratings; ``"exponential"`` uses 2**grade - 1. Ties in gain
    are interchangeable. ``nan`` when the ideal DCG is 0 (nothing relevant).
    """
    _check_k(k)
    if grades is None:
        ranked_grades = np.asarray(ranked, dtype=np.float64).ravel()
        ideal_grades = ranked_grades
    else:
        ranked_grades = np.asarray([grades.get(i, 0.0) for i in ranked], dtype=np.float64)
        ideal_grades = np.asarray(list(grades.values()), dtype=np.float64)
    if np.any(ranked_grades < 0) or np.any(ideal_grades < 0):
        raise ValueError("relevance grades must be non-negative")
    ideal = _dcg(_gain(np.sort(ideal_grades)[::-1][:k], gain))
    if ideal == 0:
        return math.nan
    return _dcg(_gain(ranked_grades[:k], gain)) / ideal
