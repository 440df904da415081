"""Metrics against the worked numbers of DESIGN.md section 4 and degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.metrics import (
    average_precision,
    average_precision_at_k,
    average_precisions,
    map_at_k,
    mean_average_precision,
    ndcg_at_k,
    plain_average_precision,
    precision_at_k,
    recall_at_k,
)

RANKING = ["a", "x1", "j", "b", "x2", "x3", "c", "x4", "d", "x5"]
POSITIVES = {"a", "b", "c", "d"}
HOLIDAYS_RANKING = ["100000", "100001", "200100", "100002"]


def test_trapezoidal_ap_with_junk_removed() -> None:
    assert average_precision(RANKING, POSITIVES, {"j"}) == pytest.approx(0.624405, abs=1e-6)


def test_trapezoidal_ap_with_junk_as_negative() -> None:
    assert average_precision(RANKING, POSITIVES) == pytest.approx(0.551835, abs=1e-6)


def test_plain_ap_with_junk_removed() -> None:
    assert plain_average_precision(RANKING, POSITIVES, {"j"}) == pytest.approx(0.666667, abs=1e-6)
    assert plain_average_precision(RANKING, POSITIVES, {"j"}) >= average_precision(
        RANKING, POSITIVES, {"j"}
    )


def test_holidays_query_dropped_or_kept() -> None:
    positives = {"100001", "100002"}
    dropped = average_precision(HOLIDAYS_RANKING, positives, {"100000"})
    assert dropped == pytest.approx(0.791667, abs=1e-6)
    assert average_precision(HOLIDAYS_RANKING, positives) == pytest.approx(0.333333, abs=1e-6)


def test_integer_fast_path_matches_hashable_path() -> None:
    ids = {name: i for i, name in enumerate(RANKING)}
    ranking = np.array([ids[n] for n in RANKING])
    positives = frozenset(ids[p] for p in POSITIVES)
    assert average_precision(ranking, positives, frozenset({ids["j"]})) == pytest.approx(0.624405)
    assert average_precision(list(ranking), positives, {ids["j"]}) == pytest.approx(0.624405)
    assert plain_average_precision(ranking, np.array(sorted(positives)), [2]) == pytest.approx(
        0.666667, abs=1e-6
    )


def test_vectorised_aps_match_single_query() -> None:
    rankings = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    positives = [frozenset({0, 3, 6, 8}), frozenset({9})]
    junk = [frozenset({2}), frozenset()]
    aps = average_precisions(rankings, positives, junk)
    np.testing.assert_allclose(aps, [0.624405, 1.0], atol=1e-6)
    plain = average_precisions(rankings, positives, junk, trapezoid=False)
    np.testing.assert_allclose(plain, [0.666667, 1.0], atol=1e-6)


def test_vectorised_aps_accept_ragged_top_k_and_no_positives() -> None:
    rankings = [np.array([5, 1]), np.array([0, 1, 2])]
    aps = average_precisions(rankings, [{1, 7}, set()])
    # Query 0: positive 1 (i=0) at rank 1 -> (0/1 + 1/2)/2 / n_pos=2 = 0.125; 7 unranked.
    assert aps[0] == pytest.approx(0.125)
    assert math.isnan(aps[1])
    with pytest.raises(ValueError, match="2 rankings but 1"):
        average_precisions(rankings, [{1}])


def test_no_positives_gives_nan_and_map_skips_it() -> None:
    assert math.isnan(average_precision(["a", "b"], set()))
    assert math.isnan(plain_average_precision(np.array([0, 1]), frozenset()))
    assert math.isnan(recall_at_k(["a"], set(), 1))
    assert mean_average_precision([0.5, math.nan, 1.0]) == pytest.approx(0.75)
    assert math.isnan(mean_average_precision([]))


def test_all_positives_first_is_one() -> None:
    assert average_precision(["a", "b", "x", "y"], {"a", "b"}) == 1.0
    assert plain_average_precision(["a", "b", "x"], {"a", "b"}) == 1.0
    assert average_precision(["j", "a", "b", "x"], {"a", "b"}, {"j"}) == 1.0


def test_positive_never_ranked_adds_nothing() -> None:
    # Only "a" found at rank 0: contributes 1 / n_pos with n_pos = 2.
    assert average_precision(["a", "x"], {"a", "z"}) == pytest.approx(0.5)
    assert average_precision(["x", "y"], {"a"}) == 0.0


def test_positive_that_is_also_junk_counts_as_junk_only() -> None:
    assert average_precision(["x", "a", "b"], {"a", "b"}, {"x", "a"}) == 1.0
    assert average_precision(np.array([9, 0, 1]), {0, 1}, {9, 0}) == 1.0


def test_duplicate_positive_in_ranking_is_rejected() -> None:
    with pytest.raises(ValueError, match="more than once"):
        average_precision(np.array([1, 1]), {1})


def test_precision_recall_and_ap_at_k() -> None:
    assert precision_at_k(RANKING, POSITIVES, 4, {"j"}) == pytest.approx(2 / 4)
    assert recall_at_k(RANKING, POSITIVES, 4, {"j"}) == pytest.approx(2 / 4)
    # k larger than the list: precision still divides by k, recall by n_pos.
    assert precision_at_k(["a", "b"], {"a", "b"}, 10) == pytest.approx(0.2)
    assert recall_at_k(["a", "b"], {"a", "b", "c"}, 10) == pytest.approx(2 / 3)
    # AP@4 (junk removed: a x1 b x2): (1/1 + 2/3) / min(4, 4).
    assert average_precision_at_k(RANKING, POSITIVES, 4, {"j"}) == pytest.approx((1 + 2 / 3) / 4)
    # AP@1 with a hit at rank 0 is 1 even with more positives than k.
    assert average_precision_at_k(RANKING, POSITIVES, 1) == 1.0
    # k beyond the list equals plain AP.
    assert average_precision_at_k(RANKING, POSITIVES, 100, {"j"}) == pytest.approx(
        plain_average_precision(RANKING, POSITIVES, {"j"})
    )
    # AP@2: "a x1" -> 1/min(2, 4); "x q" -> (1/2)/min(2, 1); queries without positives skipped.
    rankings = [RANKING, ["x", "q"], ["x"]]
    assert map_at_k(rankings, [POSITIVES, {"q"}, set()], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k(RANKING, POSITIVES, 0)


def test_ndcg_ideal_ranking_is_one() -> None:
    assert ndcg_at_k([3, 2, 1, 0], 4) == pytest.approx(1.0)
    assert ndcg_at_k([3, 2, 1, 0], 4, gain="exponential") == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b"], 2, {"a": 5, "b": 1}) == pytest.approx(1.0)


def test_ndcg_linear_and_exponential_values() -> None:
    discount = 1 / np.log2(3)
    ideal_linear = 2 + 1 * discount
    assert ndcg_at_k([1, 2], 2) == pytest.approx((1 + 2 * discount) / ideal_linear)
    ideal_exp = 3 + 1 * discount
    assert ndcg_at_k([1, 2], 2, gain="exponential") == pytest.approx((1 + 3 * discount) / ideal_exp)


def test_ndcg_ties_and_cutoff() -> None:
    # Swapping items of equal grade changes nothing.
    assert ndcg_at_k(["a", "b", "c"], 3, {"a": 2, "b": 2, "c": 1}) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "a", "c"], 3, {"a": 2, "b": 2, "c": 1}) == pytest.approx(1.0)
    # Only the top k count; k beyond the list is fine.
    assert ndcg_at_k([2, 0, 1], 1) == pytest.approx(1.0)
    assert ndcg_at_k([2, 1], 10) == pytest.approx(1.0)


def test_ndcg_relevant_item_missing_from_ranking_lowers_score() -> None:
    grades = {"a": 1, "z": 1}
    assert ndcg_at_k(["a", "x"], 2, grades) == pytest.approx(1 / (1 + 1 / np.log2(3)))


def test_ndcg_nothing_relevant_is_nan_and_bad_input_raises() -> None:
    assert math.isnan(ndcg_at_k([0, 0], 2))
    with pytest.raises(ValueError, match="non-negative"):
        ndcg_at_k([-1, 2], 2)
    with pytest.raises(ValueError, match="gain must be"):
        ndcg_at_k([1], 1, gain="cubic")  # type: ignore[arg-type]
