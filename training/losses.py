"""The hashing objective on tanh-relaxed codes, as pure ``keras.ops`` functions (any backend).

Distances are squared Euclidean between relaxed codes: for ±1 codes that is 4 x Hamming, so a
margin of ``m`` Hamming bits is ``4 m`` here. Miners work inside a P x K batch (labels = group,
or source image). Besides the triplet term: quantisation, bit balance, a similarity-preserving
term (code inner products / K match the centred cosine of the float features, over all pairs
of the batch: unsupervised, so it carries the float geometry to groups never trained on) and a
pull of the hash layer back to its starting (ITQ) weights.
"""

from __future__ import annotations

from typing import Any

from keras import ops

MINING_MODES = ("batch-all", "batch-hard", "semi-hard")
_BIG = 1e9


def margin_from_bits(margin_bits: float) -> float:
    """Squared-Euclidean margin for a Hamming margin: ``4 * margin_bits``."""
    return 4.0 * float(margin_bits)


def squared_distances(a: Any, b: Any) -> Any:
    """Row-wise squared Euclidean distance ||a_i - b_i||^2 (same-shaped (N, K) tensors)."""
    return ops.sum(ops.square(a - b), axis=-1)


def pairwise_squared_distances(u: Any) -> Any:
    """(B, B) squared Euclidean distances between the rows of (B, K) ``u``, clipped at 0."""
    norms = ops.sum(ops.square(u), axis=-1)
    gram = ops.matmul(u, ops.transpose(u))
    return ops.maximum(ops.expand_dims(norms, 1) - 2.0 * gram + ops.expand_dims(norms, 0), 0.0)


def triplet_loss(anchor: Any, positive: Any, negative: Any, margin_bits: float) -> Any:
    """Per-triplet ``max(d(a,p) - d(a,n) + 4 m, 0)`` for explicit (N, K) anchor/pos/neg codes."""
    d_ap = squared_distances(anchor, positive)
    d_an = squared_distances(anchor, negative)
    return ops.relu(d_ap - d_an + margin_from_bits(margin_bits))


def pair_masks(labels: Any) -> tuple[Any, Any]:
    """(B, B) float masks: positives (same label, not itself) and negatives (other label)."""
    labels = ops.reshape(labels, (-1,))
    same = ops.cast(ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0)), "float32")
    eye = ops.eye(ops.shape(labels)[0], dtype="float32")
    return same - eye, 1.0 - same


def batch_all_triplet_loss(u: Any, labels: Any, margin_bits: float) -> tuple[Any, Any]:
    """Mean loss over the valid (a, p, n) triplets with non-zero loss, and their fraction."""
    d = pairwise_squared_distances(u)
    positive, negative = pair_masks(labels)
    margin = margin_from_bits(margin_bits)
    loss = ops.expand_dims(d, 2) - ops.expand_dims(d, 1) + margin  # [a, p, n]
    valid = ops.expand_dims(positive, 2) * ops.expand_dims(negative, 1)
    loss = ops.relu(loss) * valid
    active = ops.cast(loss > 1e-12, "float32")
    n_active = ops.sum(active)
    mean = ops.sum(loss) / ops.maximum(n_active, 1.0)
    return mean, n_active / ops.maximum(ops.sum(valid), 1.0)


def hardest_pairs(d: Any, labels: Any) -> tuple[Any, Any]:
    """Per anchor: index of the farthest positive and of the nearest negative."""
    positive, negative = pair_masks(labels)
    hardest_positive = ops.argmax(d * positive - _BIG * (1.0 - positive), axis=1)
    hardest_negative = ops.argmin(d + _BIG * (1.0 - negative), axis=1)
    return hardest_positive, hardest_negative


def batch_hard_triplet_loss(u: Any, labels: Any, margin_bits: float) -> tuple[Any, Any]:
    """Mean over anchors of the loss with their hardest positive and hardest negative."""
    d = pairwise_squared_distances(u)
    positive, negative = pair_masks(labels)
    p_index, n_index = hardest_pairs(d, labels)
    d_ap = ops.take_along_axis(d, ops.expand_dims(p_index, 1), axis=1)[:, 0]
    d_an = ops.take_along_axis(d, ops.expand_dims(n_index, 1), axis=1)[:, 0]
    has_both = ops.cast((ops.sum(positive, 1) > 0) & (ops.sum(negative, 1) > 0), "float32")
    loss = ops.relu(d_ap - d_an + margin_from_bits(margin_bits)) * has_both
    mean = ops.sum(loss) / ops.maximum(ops.sum(has_both), 1.0)
    active = ops.sum(ops.cast(loss > 1e-12, "float32")) / ops.maximum(ops.sum(has_both), 1.0)
    return mean, active


def semi_hard_negatives(d: Any, labels: Any) -> Any:
    """(B, B) index of the negative for each (anchor, positive) pair (FaceNet semi-hard).

    The nearest negative farther than the positive; where there is none, the farthest negative
    (the least hard of those closer than the positive), as TensorFlow Addons did.
    """
    _, negative = pair_masks(labels)
    d_an = ops.expand_dims(d, 1)  # [a, 1, n]
    d_ap = ops.expand_dims(d, 2)  # [a, p, 1]
    outside = ops.expand_dims(negative, 1) * ops.cast(d_an > d_ap, "float32")  # [a, p, n]
    nearest_outside = ops.argmin(d_an + _BIG * (1.0 - outside), axis=2)
    farthest_inside = ops.argmax(ops.expand_dims(d * negative - _BIG * (1.0 - negative), 1), axis=2)
    farthest_inside = ops.broadcast_to(farthest_inside, ops.shape(nearest_outside))
    return ops.where(ops.sum(outside, axis=2) > 0, nearest_outside, farthest_inside)


def semi_hard_triplet_loss(u: Any, labels: Any, margin_bits: float) -> tuple[Any, Any]:
    """Mean over (anchor, positive) pairs of the loss with their semi-hard negative."""
    d = pairwise_squared_distances(u)
    positive, negative = pair_masks(labels)
    n_index = semi_hard_negatives(d, labels)
    d_an = ops.take_along_axis(d, n_index, axis=1)  # [a, p] -> d[a, n(a, p)]
    has_negative = ops.cast(ops.sum(negative, 1, keepdims=True) > 0, "float32")
    valid = positive * has_negative
    loss = ops.relu(d - d_an + margin_from_bits(margin_bits)) * valid
    n_valid = ops.maximum(ops.sum(valid), 1.0)
    return ops.sum(loss) / n_valid, ops.sum(ops.cast(loss > 1e-12, "float32")) / n_valid


def quantization_loss(u: Any) -> Any:
    """Mean of (|u| - 1)^2: pulls relaxed codes towards ±1."""
    return ops.mean(ops.square(ops.abs(u) - 1.0))


def bit_balance_loss(u: Any) -> Any:
    """Mean over bits of (batch mean of the bit)^2: pushes each bit to be +1 half the time."""
    return ops.mean(ops.square(ops.mean(u, axis=0)))


def centred_cosine_similarities(features: Any, mean: Any) -> Any:
    """(B, B) cosine similarities of ``l2_normalize(features) - mean`` (mean: (D,), e.g. the
    training set's mean unit vector, as ITQ centres; zeros for plain cosine)."""
    x = features / ops.maximum(ops.norm(features, axis=-1, keepdims=True), 1e-12)
    x = x - ops.reshape(mean, (1, -1))
    x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)
    return ops.matmul(x, ops.transpose(x))


def similarity_preserving_loss(u: Any, targets: Any) -> Any:
    """Mean over all (i, j) pairs of the batch of (u_i . u_j / K - targets_ij)^2.

    For ±1 codes u_i . u_j / K = 1 - 2 Hamming / K, so this asks the Hamming ranking to follow
    the target similarities (e.g. :func:`centred_cosine_similarities` of the float features).
    """
    bits = float(ops.shape(u)[-1])
    return ops.mean(ops.square(ops.matmul(u, ops.transpose(u)) / bits - targets))


def anchor_loss(weights: Any, initial: Any) -> Any:
    """Relative squared distance ||W - W0||^2 / ||W0||^2 of a weight tensor to its start."""
    return ops.sum(ops.square(weights - initial)) / ops.maximum(ops.sum(ops.square(initial)), 1e-12)


_MINERS = {
    "batch-all": batch_all_triplet_loss,
    "batch-hard": batch_hard_triplet_loss,
    "semi-hard": semi_hard_triplet_loss,
}


def mined_triplet_loss(u: Any, labels: Any, mining: str, margin_bits: float) -> tuple[Any, Any]:
    """The triplet loss of a P x K batch under a mining mode, and the fraction of active terms."""
    if mining not in _MINERS:
        raise ValueError(f"unknown mining {mining!r}; choose from {', '.join(MINING_MODES)}")
    return _MINERS[mining](u, labels, margin_bits)


def hash_objective(
    u: Any,
    labels: Any,
    *,
    mining: str = "batch-hard",
    margin_bits: float = 2.0,
    quantization_weight: float = 0.1,
    balance_weight: float = 0.1,
    triplet_weight: float = 1.0,
    similarity_targets: Any = None,
    similarity_weight: float = 0.0,
) -> dict[str, Any]:
    """Total loss and its parts: w_t * triplet / K + w_q * quantisation + w_b * bit balance
    + w_s * similarity preservation (when ``similarity_targets``, (B, B), are given).

    The triplet term is divided by the code length K, so the weights mean the same at any K.
    """
    triplet, active = mined_triplet_loss(u, labels, mining, margin_bits)
    triplet = triplet / float(ops.shape(u)[-1])
    quantization = quantization_loss(u)
    balance = bit_balance_loss(u)
    total = triplet_weight * triplet + quantization_weight * quantization
    total = total + balance_weight * balance
    if similarity_targets is not None:
        similarity = similarity_preserving_loss(u, similarity_targets)
        total = total + similarity_weight * similarity
    else:
        similarity = ops.zeros(())
    return {
        "loss": total,
        "triplet": triplet,
        "quantization": quantization,
        "balance": balance,
        "similarity": similarity,
        "active": active,
    }
