"""Unsupervised binary baselines (LSH, PCA + sign, PCA + ITQ) on synthetic clustered features."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from retrieval.backbones import Backbone
from retrieval.baselines import BASELINES, BinaryEncoder, _itq_rotation
from retrieval.datasets.base import GroundTruth, Query, RetrievalDataset
from retrieval.evaluation import DatasetFeatures, evaluate_method
from retrieval.ranking import l2_normalize

N_CLUSTERS, PER_CLUSTER, DIM = 10, 8, 64

# Stands in for a real backbone: evaluate_method only reads its name and cache key.
SYNTHETIC_BACKBONE = Backbone("synthetic", None, 0, DIM, "avg", "none", "test")  # type: ignore[arg-type]


def clustered_features(
    seed: int = 0, noise: float = 0.5, n_clusters: int = N_CLUSTERS, per_cluster: int = PER_CLUSTER
) -> tuple[np.ndarray, np.ndarray]:
    """(N, DIM) float32 points around random centres, and the cluster label of each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, DIM))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    points = centres[labels] + noise * rng.standard_normal((len(labels), DIM))
    return points.astype(np.float32), labels


def cluster_dataset(labels: np.ndarray) -> tuple[RetrievalDataset, np.ndarray]:
    """The first point of each cluster queries it; positives are the rest, itself is junk."""
    query_rows = np.array([int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)])
    queries = [
        Query(
            name=f"cluster{c}",
            path=Path(f"{row}.jpg"),
            ground_truth={
                "default": GroundTruth(
                    frozenset(np.flatnonzero(labels == c).tolist()) - {int(row)},
                    frozenset({int(row)}),
                )
            },
            database_index=int(row),
        )
        for c, row in enumerate(query_rows)
    ]
    n = len(labels)
    dataset = RetrievalDataset(
        name="synthetic",
        root=Path("synthetic"),
        image_paths=[Path(f"{i}.jpg") for i in range(n)],  # never read
        image_ids=[str(i) for i in range(n)],
        queries=queries,
        groups=labels.tolist(),
    )
    return dataset, query_rows


def direct_features(points: np.ndarray, query_rows: np.ndarray) -> DatasetFeatures:
    return DatasetFeatures(
        database=points,
        database_indices=np.arange(len(points)),
        queries=points[query_rows],
        query_indices=np.arange(len(query_rows)),
        query_crop="no query boxes in this dataset",
    )


def quantisation_error(projected: np.ndarray, rotation: np.ndarray) -> float:
    """ITQ's objective ||sign(VR) - VR||_F^2."""
    rotated = projected @ rotation
    return float(np.sum((np.where(rotated >= 0, 1.0, -1.0) - rotated) ** 2))


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    return clustered_features()


# --- encoder mechanics ------------------------------------------------------------------------


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("bits", [8, 16, 32])
def test_codes_are_n_by_k_booleans(clustered, method: str, bits: int) -> None:
    points, _ = clustered
    encoder = BinaryEncoder(method, bits).fit(points)
    codes = encoder.encode(points)
    assert codes.shape == (len(points), bits) and codes.dtype == bool
    assert encoder.projection is not None and encoder.projection.shape == (DIM, bits)
    unseen = np.random.default_rng(9).standard_normal((3, DIM))
    assert encoder.encode(unseen).shape == (3, bits)
    # Centred data: no bit is constant over the database (every hyperplane splits it).
    assert codes.any(axis=0).all() and (~codes).any(axis=0).all()


@pytest.mark.parametrize("method", BASELINES)
def test_deterministic_for_a_seed(clustered, method: str) -> None:
    points, _ = clustered
    first = BinaryEncoder(method, 16, seed=3).fit(points)
    again = BinaryEncoder(method, 16, seed=3).fit(points)
    np.testing.assert_array_equal(first.projection, again.projection)
    np.testing.assert_array_equal(first.encode(points), again.encode(points))


def test_seed_changes_lsh_and_itq_but_not_pca(clustered) -> None:
    points, _ = clustered
    for method in ("lsh", "itq"):
        a = BinaryEncoder(method, 16, seed=0).fit(points).projection
        b = BinaryEncoder(method, 16, seed=1).fit(points).projection
        assert not np.allclose(a, b), method
    np.testing.assert_array_equal(
        BinaryEncoder("pca", 16, seed=0).fit(points).projection,
        BinaryEncoder("pca", 16, seed=1).fit(points).projection,
    )


def test_encoding_ignores_feature_scale(clustered) -> None:
    points, _ = clustered
    encoder = BinaryEncoder("itq", 16).fit(points)
    np.testing.assert_array_equal(encoder.encode(points), encoder.encode(7.5 * points))
    assert BinaryEncoder("itq", 16).fit(3 * points).encode(points).tolist() == (
        encoder.encode(points).tolist()
    )


def test_pca_projection_is_orthonormal_and_ordered_by_variance(clustered) -> None:
    points, _ = clustered
    encoder = BinaryEncoder("pca", 32).fit(points)
    projection = encoder.projection
    np.testing.assert_allclose(projection.T @ projection, np.eye(32), atol=1e-10)
    centred = l2_normalize(points).astype(np.float64) - encoder.mean
    variances = (centred @ projection).var(axis=0)
    assert np.all(np.diff(variances) <= 1e-12)
    # No direction outside the projection carries more variance than its weakest column.
    residual = centred - centred @ projection @ projection.T
    top_residual = np.linalg.svd(residual, compute_uv=False)[0] ** 2 / len(points)
    assert top_residual <= variances[-1] + 1e-12


def test_itq_rotation_is_orthogonal_and_lowers_quantisation_error(clustered) -> None:
    points, _ = clustered
    pca = BinaryEncoder("pca", 16).fit(points)
    itq = BinaryEncoder("itq", 16).fit(points)
    np.testing.assert_allclose(itq.mean, pca.mean)
    # ITQ = PCA directions followed by a rotation R, recovered as P^T (P R).
    rotation = pca.projection.T @ itq.projection
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(16), atol=1e-10)
    np.testing.assert_allclose(pca.projection @ rotation, itq.projection, atol=1e-10)
    projected = (l2_normalize(points).astype(np.float64) - pca.mean) @ pca.projection
    assert quantisation_error(projected, rotation) <= quantisation_error(projected, np.eye(16))
    # ITQ's codes are sign(VR).
    np.testing.assert_array_equal(itq.encode(points), projected @ rotation > 0)


def test_itq_objective_never_increases_over_iterations(clustered) -> None:
    points, _ = clustered
    pca = BinaryEncoder("pca", 16).fit(points)
    projected = (l2_normalize(points).astype(np.float64) - pca.mean) @ pca.projection
    errors = [
        quantisation_error(projected, _itq_rotation(projected, np.random.default_rng(4), steps))
        for steps in range(0, 12)
    ]
    assert all(later <= earlier + 1e-9 for earlier, later in itertools.pairwise(errors))
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("method", ["pca", "itq"])
def test_more_bits_than_the_rank_raise(method: str) -> None:
    points, _ = clustered_features()  # 80 x 64: at most 64 principal directions
    with pytest.raises(ValueError, match="bits <="):
        BinaryEncoder(method, 65).fit(points)
    few = points[:10]  # 10 x 64
    with pytest.raises(ValueError, match="bits <="):
        BinaryEncoder(method, 11).fit(few)
    BinaryEncoder(method, 64).fit(points)  # at the limit: fine


@pytest.mark.parametrize("method", ["pca", "itq"])
def test_bits_equal_to_the_number_of_images_exceed_the_rank(method: str) -> None:
    points = np.random.default_rng(0).standard_normal((16, DIM))  # centred rank: 15
    with pytest.raises(ValueError):
        BinaryEncoder(method, 16).fit(points)


def test_lsh_may_use_more_bits_than_dimensions(clustered) -> None:
    points, _ = clustered
    assert BinaryEncoder("lsh", 128).fit(points).encode(points).shape == (len(points), 128)


def test_unknown_method_and_unfitted_encoder() -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        BinaryEncoder("sh", 16).fit(np.ones((4, 8)))
    with pytest.raises(RuntimeError, match="fit"):
        BinaryEncoder("lsh", 16).encode(np.ones((4, 8)))


# --- retrieval quality through the evaluation functions --------------------------------------


def test_codes_retrieve_same_cluster_points(clustered) -> None:
    points, labels = clustered
    dataset, query_rows = cluster_dataset(labels)
    features = direct_features(points, query_rows)

    def mean_ap(method: str, bits: int | None, feats: DatasetFeatures = features) -> float:
        record = evaluate_method(
            dataset, feats, SYNTHETIC_BACKBONE, method, bits, dataset_spec="synthetic"
        )
        scores = record["protocols"]["default"]
        assert scores["n_queries"] == N_CLUSTERS
        return scores["map"]

    # Chance: the same ground truth ranked by unrelated random features.
    noise = np.random.default_rng(1).standard_normal(points.shape).astype(np.float32)
    chance = mean_ap("float", None, direct_features(noise, query_rows))
    assert chance < 0.2  # 7 positives among 79 candidates

    assert mean_ap("float", None) > 0.99
    itq, pca = mean_ap("itq", 16), mean_ap("pca", 16)
    assert itq > 0.9 and pca > 0.6
    assert itq >= pca  # on clustered data the rotation balances the variance over bits
    assert mean_ap("lsh", 64) > 0.9
    assert mean_ap("lsh", 16) > 3 * chance
