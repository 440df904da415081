"""P x K batches from group labels, and the group split for validation.

Positives come from the same group. A collection without groups (or with groups of one image)
gets positives by expansion first: ``retrieval.datasets.augment.expand_dataset`` writes
augmented views of each image into the image's group, and their features are extracted once
(see :func:`training.data.expanded_dataset`). Groups still smaller than K are sampled with
replacement; groups of one image are never sampled (they have no positive).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np


def split_groups(
    groups: Sequence[int], val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted training and validation group ids: a seeded shuffle, ``val_fraction`` held out."""
    unique = np.unique(np.asarray(groups))
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(unique) * val_fraction)
    if val_fraction > 0 and n_val < 2:
        n_val = 2 if len(unique) >= 4 else 0
    order = np.random.default_rng(seed).permutation(unique)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def pk_batch_indices(
    groups: Sequence[int], p: int, k: int, n_batches: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_batches, p * k) row indices: each batch P groups (of >= 2 images) x K images each."""
    groups = np.asarray(groups)
    members = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}
    eligible = [g for g, rows in members.items() if len(rows) >= 2]
    if len(eligible) < 2:
        raise ValueError(
            f"need at least 2 groups with 2+ images for triplets, got {len(eligible)}; "
            "expand the collection with augmented views (--expand-views)"
        )
    p = min(p, len(eligible))
    batches = np.empty((n_batches, p * k), dtype=np.int64)
    for b in range(n_batches):
        picked = rng.choice(len(eligible), size=p, replace=False)
        rows = []
        for index in picked:
            candidates = members[eligible[index]]
            rows.append(rng.choice(candidates, size=k, replace=len(candidates) < k))
        batches[b] = np.concatenate(rows)
    return batches


class PKBatches(keras.utils.PyDataset):
    """A Keras dataset of P x K batches ``(inputs, group labels)``, reshuffled every epoch.

    ``inputs`` is an array (features or images) or a callable mapping row indices to a batch.
    """

    def __init__(
        self,
        inputs: np.ndarray | Callable[[np.ndarray], np.ndarray],
        groups: Sequence[int],
        *,
        p: int = 8,
        k: int = 4,
        batches_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.inputs = inputs
        self.groups = np.asarray(groups, dtype=np.int32)
        self.p, self.k = p, k
        self.batches_per_epoch = batches_per_epoch or max(1, len(self.groups) // (p * k))
        self.rng = np.random.default_rng(seed)
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.batches = pk_batch_indices(
            self.groups, self.p, self.k, self.batches_per_epoch, self.rng
        )

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.batches[index]
        x = self.inputs(rows) if callable(self.inputs) else self.inputs[rows]
        return x, self.groups[rows]

    def on_epoch_end(self) -> None:
        """Draw the next epoch's batches."""
        self._new_epoch()
