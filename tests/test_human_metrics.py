"""Human-rating aggregates against numbers computed by hand."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime

import pytest

from retrieval import human_metrics as hm
from retrieval.ratings import RatingRow, open_ratings

L3 = math.log2(3)  # discount of the second place


def row(identity, rater, query, result, rank, distance, score):
    return {
        "index_identity": identity,
        "rater": rater,
        "query_hash": query,
        "result_id": result,
        "rank": rank,
        "distance": distance,
        "score": score,
    }


# Index "A": ann rates q1 (3 results) and q2 (2); bob rates q1's first two (skips rank 3).
# Index "B": a single rating.
ROWS = [
    row("A", "ann", "q1", "r1", 1, 2, 8),
    row("A", "ann", "q1", "r2", 2, 5, 3),
    row("A", "ann", "q1", "r3", 3, 7, 6),
    row("A", "bob", "q1", "r1", 1, 2, 6),
    row("A", "bob", "q1", "r2", 2, 5, 5),
    row("A", "ann", "q2", "s1", 1, 4, 2),
    row("A", "ann", "q2", "s2", 2, 4, 9),
    row("B", "ann", "q1", "r1", 1, 0, 10),
]
A = [r for r in ROWS if r["index_identity"] == "A"]


def test_counts():
    assert hm.counts(A) == {"ratings": 7, "raters": 2, "queries": 2, "pairs": 5}
    assert hm.counts(ROWS) == {"ratings": 8, "raters": 2, "queries": 3, "pairs": 6}
    assert hm.counts([]) == {"ratings": 0, "raters": 0, "queries": 0, "pairs": 0}


def test_mean_score_overall_and_by_rank():
    assert hm.mean_score(A) == pytest.approx(39 / 7)
    assert hm.mean_score_by_rank(A) == pytest.approx({1: 16 / 3, 2: 17 / 3, 3: 6.0})
    assert list(hm.mean_score_by_rank(A)) == [1, 2, 3]
    assert math.isnan(hm.mean_score([]))
    assert hm.mean_score_by_rank([]) == {}


def test_precision_at_k_per_session_then_rater_then_query():
    # k=3, t=6: ann q1 [8,3,6] -> 2/3, bob q1 [6,5] -> 1/2, q1 -> 7/12; q2 [2,9] -> 1/2.
    assert hm.human_precision_at_k(A, k=3) == pytest.approx((7 / 12 + 1 / 2) / 2)
    # t=5: ann q1 2/3, bob q1 1 -> 5/6; q2 1/2.
    assert hm.human_precision_at_k(A, k=3, threshold=5) == pytest.approx((5 / 6 + 1 / 2) / 2)
    # k=1: q1 both raters relevant (8, 6) -> 1; q2 (2) -> 0.
    assert hm.human_precision_at_k(A, k=1) == pytest.approx(0.5)
    # Ratings beyond k do not count; a session with nothing in the top k is skipped.
    only_deep = [row("A", "ann", "q9", "x", 5, 1, 10)]
    assert math.isnan(hm.human_precision_at_k(only_deep, k=3))
    assert hm.human_precision_at_k([*A, *only_deep], k=3) == pytest.approx(13 / 24)
    with pytest.raises(ValueError):
        hm.human_precision_at_k(A, k=0)


def test_ndcg_at_k_scores_as_gains():
    ann_q1 = (8 + 3 / L3 + 6 / 2) / (8 + 6 / L3 + 3 / 2)
    bob_q1 = 1.0  # [6, 5] is already best first
    ann_q2 = (2 + 9 / L3) / (9 + 2 / L3)
    assert ann_q1 == pytest.approx(0.970435, abs=1e-6)
    assert ann_q2 == pytest.approx(0.748243, abs=1e-6)
    assert hm.human_ndcg_at_k(A, k=3) == pytest.approx(((ann_q1 + bob_q1) / 2 + ann_q2) / 2)
    # k=1: 8/8, 6/6 for q1; 2/9 for q2.
    assert hm.human_ndcg_at_k(A, k=1) == pytest.approx((1 + 2 / 9) / 2)
    assert math.isnan(hm.human_ndcg_at_k([]))


def test_spearman_hand_computed_with_and_without_ties():
    def rows(distances, scores):
        return [
            row("A", "ann", "q", f"r{i}", i + 1, d, s)
            for i, (d, s) in enumerate(zip(distances, scores, strict=True))
        ]

    # ranks d [1,2,3,4], s [4,2,3,1]: sum d^2 = 18 -> 1 - 6*18/(4*15) = -0.8
    assert hm.spearman_score_distance(rows([1, 2, 3, 4], [10, 8, 9, 2])) == pytest.approx(-0.8)
    # ties: d ranks [1.5,1.5,3,4], s ranks [4,2.5,2.5,1] -> Pearson = -3.75 / 4.5
    assert hm.spearman_score_distance(rows([0, 0, 1, 2], [9, 7, 7, 1])) == pytest.approx(
        -3.75 / 4.5
    )
    assert math.isnan(hm.spearman_score_distance(rows([3, 3, 3], [1, 5, 9])))
    assert math.isnan(hm.spearman_score_distance(rows([1, 2, 3], [5, 5, 5])))
    assert math.isnan(hm.spearman_score_distance(rows([1], [5])))
    # Ratings without a distance are left out.
    mixed = [*rows([1, 2, 3, 4], [10, 8, 9, 2]), row("A", "ann", "q", "z", 9, None, 10)]
    assert hm.spearman_score_distance(mixed) == pytest.approx(-0.8)


def test_rater_agreement():
    # Shared items: q1/r1 (8, 6) and q1/r2 (3, 5).
    agreement = hm.rater_agreement(A)
    assert agreement.items == 2 and agreement.rater_pairs == 2
    assert agreement.mean_abs_diff == pytest.approx(2.0)
    assert agreement.relevance_agreement == pytest.approx(1.0)  # both sides agree at 6
    assert hm.rater_agreement(A, threshold=7).relevance_agreement == pytest.approx(0.5)
    # alpha: D_o = (8 + 8) / 4 = 4; D_e = 2 * 52 / (4 * 3); 1 - 4 / D_e = 14 / 26
    assert agreement.alpha == pytest.approx(14 / 26)
    # Three raters on one item give three rater pairs.
    three = [row("A", name, "q", "r", 1, 0, s) for name, s in (("a", 2), ("b", 4), ("c", 9))]
    agreement3 = hm.rater_agreement(three)
    assert agreement3.rater_pairs == 3
    assert agreement3.mean_abs_diff == pytest.approx((2 + 7 + 5) / 3)
    assert agreement3.relevance_agreement == pytest.approx(1 / 3)  # only (2, 4) agree
    none = hm.rater_agreement(A[:3])
    assert none.items == 0 and math.isnan(none.mean_abs_diff) and math.isnan(none.alpha)


def test_krippendorff_alpha_matches_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers,
    # 12 units, missing values; published alpha nominal 0.743, interval 0.849.
    n = None
    observers = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = [[v for v in unit if v is not None] for unit in zip(*observers, strict=True)]
    assert hm.krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert hm.krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)
    assert hm.krippendorff_alpha([[1, 1], [2, 2]]) == pytest.approx(1.0)
    assert math.isnan(hm.krippendorff_alpha([[5, 5], [5]]))  # no variation
    assert math.isnan(hm.krippendorff_alpha([[5]]))
    with pytest.raises(ValueError):
        hm.krippendorff_alpha(units, "ordinal")  # type: ignore[arg-type]


def test_summarize_groups_by_index_identity():
    summary = hm.summarize(ROWS, k=3)
    assert list(summary) == ["A", "B"]
    a, b = summary["A"], summary["B"]
    assert (a.ratings, a.raters, a.queries) == (7, 2, 2)
    assert a.mean_score == pytest.approx(39 / 7)
    assert a.precision_at_k == pytest.approx(13 / 24)
    assert a.ndcg_at_k == pytest.approx(hm.human_ndcg_at_k(A, k=3))
    assert a.spearman == pytest.approx(hm.spearman_score_distance(A))
    assert a.agreement.alpha == pytest.approx(14 / 26)
    assert a.score_by_rank == pytest.approx({1: 16 / 3, 2: 17 / 3, 3: 6.0})
    assert (b.ratings, b.mean_score, b.precision_at_k, b.ndcg_at_k) == (1, 10.0, 1.0, 1.0)
    assert math.isnan(b.spearman) and b.agreement.items == 0
    flat = a.as_dict()
    assert flat["agreement_mean_abs_diff"] == pytest.approx(2.0)
    assert "score_by_rank" not in flat and flat["k"] == 3
    assert hm.summarize([]) == {}


def _same(a: dict, b: dict) -> bool:
    """Equal dicts, floats compared approximately and nan equal to nan."""
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) and isinstance(y, float):
            if not (math.isnan(x) and math.isnan(y)) and x != pytest.approx(y):
                return False
        elif x != y:
            return False
    return True


def test_rating_rows_and_csv_export_give_the_same_summary(tmp_path):
    # Dataclass rows from the store and string dicts from its CSV export are both accepted.
    now = datetime(2024, 1, 1, tzinfo=UTC)
    keys = ("index_identity", "rater", "query_hash", "result_id", "rank", "distance", "score")
    dataclass_rows = [
        RatingRow(**{k: r[k] for k in keys}, query_path="", result_path="",
                  created_at=now, updated_at=now)
        for r in ROWS
    ]  # fmt: skip
    with open_ratings(tmp_path / "r.db") as store:
        for r in ROWS:
            store.save_rating(
                r["rater"], r["query_hash"], "", r["result_id"], "", r["rank"],
                r["distance"], r["index_identity"], r["score"],
            )  # fmt: skip
        csv_rows = list(csv.DictReader(io.StringIO(store.export_csv())))
        store_rows = store.ratings()
    expected = [s.as_dict() for s in hm.summarize(ROWS, k=3).values()]
    for rows in (dataclass_rows, csv_rows, store_rows):
        got = [s.as_dict() for s in hm.summarize(rows, k=3).values()]
        assert len(got) == len(expected)
        assert all(_same(g, e) for g, e in zip(got, expected, strict=True))
