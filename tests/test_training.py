"""Triplet losses and miners (hand-computed), P x K sampling, and a short training run."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
from keras import ops

from retrieval.backbones import Backbone
from retrieval.baselines import BinaryEncoder
from retrieval.hashing import HashModel, build_hash_head
from training.data import source_ids
from training.losses import (
    anchor_loss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    bit_balance_loss,
    centred_cosine_similarities,
    hardest_pairs,
    hash_objective,
    pairwise_squared_distances,
    quantization_loss,
    semi_hard_negatives,
    semi_hard_triplet_loss,
    similarity_preserving_loss,
    triplet_loss,
)
from training.sampler import pk_batch_indices, split_groups
from training.train import (
    TrainConfig,
    center_hash_bits,
    fine_tune_embedder,
    init_from_itq,
    leave_one_out_map,
    train_embedder,
    train_hash_head,
    validation_map,
)

# Four points on a line, two groups: squared distances d01=1, d02=4, d03=25, d12=1, d13=16, d23=9.
LINE = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [5.0, 0.0]], np.float32)
LINE_LABELS = np.array([0, 0, 1, 1], np.int32)


def as_numpy(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def clustered(n_groups: int, per_group: int, dim: int = 32, seed: int = 0, signal: int = 8):
    """Features stand-ins and group labels: groups differ in ``signal`` dims, the rest is noise.

    The nuisance dimensions carry large noise shared by no group, so a head that learns to
    ignore them also ranks groups it has never seen better (as a real backbone's would).
    """
    rng = np.random.default_rng(seed)
    centres = np.zeros((n_groups, dim))
    centres[:, :signal] = rng.standard_normal((n_groups, signal))
    groups = np.repeat(np.arange(n_groups), per_group)
    noise = rng.standard_normal((len(groups), dim)) * 0.3
    noise[:, signal:] *= 6.0
    return (centres[groups] + noise).astype(np.float32), groups


def test_triplet_loss_zero_when_margin_met_and_positive_otherwise():
    a = np.array([[1, 1, 1, 1]], np.float32)
    p = np.array([[1, 1, 1, -1]], np.float32)  # Hamming 1: squared distance 4
    n = np.array([[-1, -1, 1, 1]], np.float32)  # Hamming 2: squared distance 8
    assert as_numpy(triplet_loss(a, p, n, margin_bits=1.0))[0] == pytest.approx(0.0)
    assert as_numpy(triplet_loss(a, p, n, margin_bits=0.5))[0] == pytest.approx(0.0)
    assert as_numpy(triplet_loss(a, p, n, margin_bits=1.5))[0] == pytest.approx(2.0)  # 4-8+6
    assert as_numpy(triplet_loss(a, n, p, margin_bits=0.0))[0] == pytest.approx(4.0)  # swapped


def test_pairwise_distances():
    d = as_numpy(pairwise_squared_distances(LINE))
    assert d[0, 1] == pytest.approx(1) and d[0, 3] == pytest.approx(25)
    assert d[2, 3] == pytest.approx(9) and np.allclose(np.diag(d), 0)


def test_batch_hard_picks_farthest_positive_and_nearest_negative():
    d = pairwise_squared_distances(LINE)
    pos, neg = (as_numpy(x) for x in hardest_pairs(d, LINE_LABELS))
    assert pos.tolist() == [1, 0, 3, 2]
    assert neg.tolist() == [2, 2, 1, 1]
    # margin 0.5 bit = 2: anchors 1 (1-1+2=2) and 2 (9-1+2=10) are active; mean 12/4.
    loss, active = batch_hard_triplet_loss(LINE, LINE_LABELS, margin_bits=0.5)
    assert as_numpy(loss) == pytest.approx(3.0)
    assert as_numpy(active) == pytest.approx(0.5)


def test_batch_all_averages_over_active_triplets():
    # Active triplets: (1,0,2): 2, (2,3,0): 7, (2,3,1): 10, out of 8 valid ones.
    loss, fraction = batch_all_triplet_loss(LINE, LINE_LABELS, margin_bits=0.5)
    assert as_numpy(loss) == pytest.approx(19 / 3)
    assert as_numpy(fraction) == pytest.approx(3 / 8)


def test_semi_hard_picks_nearest_farther_negative_else_farthest():
    chosen = as_numpy(semi_hard_negatives(pairwise_squared_distances(LINE), LINE_LABELS))
    assert chosen[0, 1] == 2  # d_ap=1: negatives at 4 and 25 -> the nearer, 2
    assert chosen[1, 0] == 3  # d_ap=1: negative 2 at 1 is not farther -> 3 (16)
    assert chosen[2, 3] == 0  # d_ap=9: none farther -> the farthest, 0 (4)
    assert chosen[3, 2] == 1  # d_ap=9: 16 and 25 farther -> 1 (16)
    loss, _ = semi_hard_triplet_loss(LINE, LINE_LABELS, margin_bits=0.5)
    assert as_numpy(loss) == pytest.approx(7 / 4)  # only (2,3,0): 9-4+2


def test_quantization_and_balance_terms():
    u = np.array([[0.5, -1.0], [1.0, 0.0]], np.float32)
    assert as_numpy(quantization_loss(u)) == pytest.approx(1.25 / 4)
    assert as_numpy(bit_balance_loss(u)) == pytest.approx((0.75**2 + 0.5**2) / 2)
    assert as_numpy(quantization_loss(np.array([[1.0, -1.0]], np.float32))) == 0
    assert as_numpy(bit_balance_loss(np.array([[1.0], [-1.0]], np.float32))) == 0


def test_centred_cosine_similarities():
    f = np.array([[3.0, 4.0], [4.0, 3.0]], np.float32)
    plain = as_numpy(centred_cosine_similarities(f, np.zeros(2, np.float32)))
    assert plain == pytest.approx(np.array([[1.0, 0.96], [0.96, 1.0]]), abs=1e-6)  # 24 / 25
    # Unit vectors e1, e2 centred on their mean (0.5, 0.5): opposite directions.
    e = np.eye(2, dtype=np.float32) * 7.0  # lengths do not matter
    centred = as_numpy(centred_cosine_similarities(e, np.array([0.5, 0.5], np.float32)))
    assert centred == pytest.approx(np.array([[1.0, -1.0], [-1.0, 1.0]]), abs=1e-6)


def test_similarity_preserving_and_anchor_terms():
    u = np.eye(2, dtype=np.float32)  # u u^T / K = diag(0.5)
    targets = np.array([[1.0, 0.5], [0.5, 1.0]], np.float32)
    assert as_numpy(similarity_preserving_loss(u, targets)) == pytest.approx(0.25)  # all -0.5
    codes = np.array([[1.0, -1.0, 1.0, 1.0], [1.0, 1.0, -1.0, 1.0]], np.float32)
    exact = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # Hamming 2 of 4: 1 - 2 * 2 / 4 = 0
    assert as_numpy(similarity_preserving_loss(codes, exact)) == pytest.approx(0.0)
    w0 = np.array([[1.0, 0.0]], np.float32)
    assert as_numpy(anchor_loss(np.array([[1.0, 2.0]], np.float32), w0)) == pytest.approx(4.0)
    assert as_numpy(anchor_loss(w0, w0)) == 0


def test_objective_adds_weighted_similarity_and_triplet_terms():
    u = np.tanh(LINE)
    targets = np.full((4, 4), 0.25, np.float32)
    kwargs = {"margin_bits": 0.5, "quantization_weight": 0.1, "balance_weight": 0.2}
    plain = {k: as_numpy(v) for k, v in hash_objective(u, LINE_LABELS, **kwargs).items()}
    assert plain["similarity"] == 0
    parts = hash_objective(
        u,
        LINE_LABELS,
        **kwargs,
        triplet_weight=0.5,
        similarity_targets=targets,
        similarity_weight=3.0,
    )
    parts = {k: as_numpy(v) for k, v in parts.items()}
    assert parts["similarity"] == pytest.approx(as_numpy(similarity_preserving_loss(u, targets)))
    expected = 0.5 * plain["triplet"] + 0.1 * plain["quantization"] + 0.2 * plain["balance"]
    assert parts["loss"] == pytest.approx(expected + 3.0 * parts["similarity"], rel=1e-5)


def test_source_ids_group_the_views_of_one_source():
    paths = [
        "x/images/00003_images_00000_astronaut_orig.jpg_orig.jpg",
        "x/images/00003_images_00000_astronaut_orig.jpg_v00.jpg",
        "x/images/00004_images_00000_astronaut_v01.jpg_v11.jpg",
        "other/photo.jpg",
        "other/photo2.jpg",
    ]
    ids = source_ids(paths)
    assert ids[0] == ids[1] and len(set(ids.tolist())) == 4


def test_pk_batches_hold_p_groups_of_k():
    groups = np.repeat(np.arange(6), [5, 5, 5, 3, 1, 4])
    batches = pk_batch_indices(groups, p=3, k=4, n_batches=20, rng=np.random.default_rng(0))
    assert batches.shape == (20, 12)
    for batch in batches:
        labels = groups[batch].reshape(3, 4)
        assert all(len(set(row)) == 1 for row in labels)  # K images of one group per row
        assert len(set(labels[:, 0])) == 3  # P distinct groups
        assert 4 not in labels  # a group of one image has no positive
    with pytest.raises(ValueError, match="expand"):
        pk_batch_indices(np.arange(5), 2, 2, 1, np.random.default_rng(0))


def test_split_is_by_group_and_seeded():
    groups = np.repeat(np.arange(10), 3)
    train, val = split_groups(groups, 0.3, seed=1)
    assert len(val) == 3 and not set(train) & set(val)
    assert set(train) | set(val) == set(range(10))
    assert np.array_equal(val, split_groups(groups, 0.3, seed=1)[1])


def test_leave_one_out_map_perfect_codes():
    codes = np.repeat(np.array([[1] * 8, [-1] * 8]), 3, axis=0)
    assert leave_one_out_map(codes, np.repeat([0, 1], 3)) == pytest.approx(1.0)


def test_training_reduces_loss_raises_map_and_balances_bits(tmp_path):
    x, groups = clustered(24, 8, seed=0)
    train_groups, _ = split_groups(groups, 0.25, seed=0)
    train = np.isin(groups, train_groups)
    config = TrainConfig(
        bits=16, mining="batch-all", epochs=12, batches_per_epoch=8, p=8, k=4, patience=20
    )
    untrained = build_hash_head(x.shape[1], 16, seed=config.seed)
    before = validation_map(untrained, x[~train], groups[~train])
    model, result = train_hash_head(
        x[train],
        groups[train],
        config,
        val_features=x[~train],
        val_groups=groups[~train],
        out_dir=tmp_path,
        verbose=0,
    )
    losses = result.history["loss"]
    assert losses[-1] < 0.7 * losses[0]
    assert result.best_val_map > before + 0.05
    assert validation_map(model.head, x[~train], groups[~train]) == pytest.approx(
        result.best_val_map
    )
    with open(tmp_path / "training_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(losses) and "val_map" in rows[0]
    assert (tmp_path / "best.weights.h5").is_file()


def test_held_out_bits_are_balanced():
    # 80 held-out groups: each bit is +1 on 30-70 % of the unseen images.
    x, groups = clustered(160, 4, seed=2)
    train_groups, _ = split_groups(groups, 0.5, seed=0)
    train = np.isin(groups, train_groups)
    config = TrainConfig(bits=16, epochs=10, batches_per_epoch=8)
    model, _ = train_hash_head(x[train], groups[train], config, verbose=0)
    ones = (model.encode(x[~train]) > 0).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) <= 0.2), ones


def test_training_is_reproducible_with_a_seed():
    x, groups = clustered(8, 6, seed=3)
    config = TrainConfig(bits=16, epochs=2, batches_per_epoch=3, p=4, k=3, seed=7)
    a, _ = train_hash_head(x, groups, config, verbose=0)
    b, _ = train_hash_head(x, groups, config, verbose=0)
    assert np.array_equal(a.encode(x), b.encode(x))


def test_unknown_mining_is_refused():
    with pytest.raises(ValueError, match="mining"):
        TrainConfig(mining="random")


@pytest.mark.parametrize("mining", ["batch-hard", "semi-hard", "batch-all"])
def test_each_miner_trains(mining):
    x, groups = clustered(8, 6, seed=1)
    untrained = HashModel(build_hash_head(x.shape[1], 16, seed=0)).encode(x)
    config = TrainConfig(bits=16, mining=mining, epochs=3, batches_per_epoch=4, p=4, k=3)
    model, result = train_hash_head(x, groups, config, verbose=0)
    assert all(np.isfinite(result.history["loss"]))
    # Same start (seed 0), a few steps: retrieval of the training groups gets clearly better.
    before = leave_one_out_map(untrained, groups)
    assert leave_one_out_map(model.encode(x), groups) > before + 0.05


def test_fine_tune_step_updates_backbone_and_head():
    # End-to-end mode on a few tiny images: one step moves backbone and head weights.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    trunk = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    trunk.trainable = False
    head = build_hash_head(4, 16)
    embedder = fine_tune_embedder(trunk, head)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.float32)
    groups = np.repeat(np.arange(4), 2)
    conv_before = trunk.get_layer("conv").get_weights()[0].copy()
    hash_before = head.get_layer("hash").get_weights()[0].copy()
    config = TrainConfig(bits=16, epochs=1, batches_per_epoch=1, p=4, k=2)
    result = train_embedder(embedder, images, groups, config, verbose=0)
    assert np.isfinite(result.history["loss"][0])
    assert not np.allclose(trunk.get_layer("conv").get_weights()[0], conv_before)
    assert not np.allclose(head.get_layer("hash").get_weights()[0], hash_before)
    assert embedder(images).shape == (8, 16)


def test_similarity_term_trains_and_needs_features():
    x, groups = clustered(8, 6, seed=6)
    config = TrainConfig(bits=16, epochs=2, batches_per_epoch=3, p=4, k=3, similarity_weight=1.0)
    _, result = train_hash_head(x, groups, config, verbose=0)
    assert result.history["similarity"][-1] > 0 and np.isfinite(result.history["loss"][-1])
    images = np.zeros((8, 16, 16, 3), np.float32)
    head = build_hash_head(4, 16)
    with pytest.raises(ValueError, match="feature inputs"):
        train_embedder(head, images, np.repeat(np.arange(4), 2), config, verbose=0)
    with pytest.raises(ValueError, match="positives"):
        TrainConfig(positives="views")


def test_anchor_keeps_the_hash_layer_near_its_start():
    x, groups = clustered(8, 6, seed=7)
    moved = {}
    for weight in (0.0, 1e4):
        config = TrainConfig(
            bits=16, init="itq", epochs=2, batches_per_epoch=3, p=4, k=3, anchor_weight=weight
        )
        start = build_hash_head(x.shape[1], 16)
        init_from_itq(start, x)
        w0 = start.get_layer("hash").get_weights()[0]
        model, result = train_hash_head(x, groups, config, verbose=0)
        w = model.head.get_layer("hash").get_weights()[0]
        moved[weight] = float(np.sum((w - w0) ** 2) / np.sum(w0**2))
        assert np.isfinite(result.history["anchor"][-1])
    assert moved[1e4] < 0.2 * moved[0.0]


def test_itq_init_starts_from_itq_codes():
    x, _ = clustered(12, 6, seed=4)
    head = build_hash_head(x.shape[1], 16)
    init_from_itq(head, x, seed=0)
    itq = BinaryEncoder("itq", 16, seed=0).fit(x).encode(x)
    assert np.array_equal(HashModel(head).encode(x) > 0, itq)
    with pytest.raises(ValueError, match="projection"):
        TrainConfig(init="itq", projection_dim=32)


def test_keep_last_runs_every_epoch_and_keeps_the_last_weights():
    x, groups = clustered(12, 6, seed=5)
    config = TrainConfig(bits=16, epochs=4, batches_per_epoch=2, p=4, k=3, patience=0)
    config.keep_last = True
    model, result = train_hash_head(
        x[:36], groups[:36], config, val_features=x[36:], val_groups=groups[36:], verbose=0
    )
    assert len(result.history["loss"]) == 4
    assert validation_map(model.head, x[36:], groups[36:]) == pytest.approx(result.final_val_map)


def test_cli_trains_saves_config_and_heldout_split(tmp_path, monkeypatch):
    import retrieval.backbones
    import retrieval.cli
    from retrieval.hashing import load_hash_model
    from tests.test_hashing import colour_folder
    from training.__main__ import main

    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
    tiny = Backbone("tiny", keras.Model(inputs, pooled), 32, 8, "avg", "resize", "test")
    monkeypatch.setattr(retrieval.backbones, "load_backbone", lambda *a, **k: tiny)
    monkeypatch.setattr(retrieval.cli, "_load_backbone_for_model", lambda args, config: tiny)
    root = colour_folder(tmp_path / "shop", groups=6)
    out = tmp_path / "model"
    argv = ["--dataset", f"folder:{root}", "--bits", "16", "--out", str(out), "--epochs", "2"]
    with pytest.raises(SystemExit, match=r"init 'itq'.*bits <= "):
        main([*argv, "--quiet"])  # ITQ init: 16 bits from 8-d features is impossible
    argv += ["--init", "random", "--val-fraction", "0.34", "--groups-per-batch", "2"]
    with pytest.raises(SystemExit, match="expand"):  # unexpanded: every source a lone image
        main([*argv, "--quiet", "--positives", "source"])
    assert main([*argv, "--quiet"]) == 0

    config = json.loads((out / "config.json").read_text())
    training = config["training"]
    assert config["backbone"] == "tiny" and config["feature_key"] == tiny.cache_key
    assert training["dataset"] == f"folder:{root}" and len(training["val_groups"]) == 2
    assert len(training["train_groups"]) == 4 and training["n_train_images"] == 16
    assert training["config"]["bits"] == 16 and len(training["train_image_hashes"]) == 16
    assert (out / "training_log.csv").is_file()
    assert load_hash_model(out, backbone="tiny", feature_key=tiny.cache_key).bits == 16
    heldout = list(csv.DictReader((out / "heldout.csv").read_text().splitlines()))
    assert len(heldout) == 8 and sum(int(r["is_query"]) for r in heldout) == 2

    result = tmp_path / "eval.json"
    evaluate = ["evaluate", "--model", str(out), "--no-store", "--json", str(result)]
    assert retrieval.cli.main([*evaluate, "--dataset", f"manifest:{out / 'heldout.csv'}"]) == 0
    assert json.loads(result.read_text())["method"] == "learned"
    with pytest.raises(SystemExit, match="refusing"):
        retrieval.cli.main([*evaluate, "--dataset", f"folder:{root}"])


def test_study_table_shows_both_baseline_fits_and_missing_values():
    from training.study import table

    row = {"mining": "batch-hard", "bits": 64, "train_seconds": 3.25}
    row |= {m: 0.5 for m in ("float", "lsh", "pca", "itq", "lsh_train", "itq_train", "learned")}
    row |= {"pca_train": None, "val_map_learned": 0.25}
    lines = table([row]).splitlines()
    assert "ITQ train" in lines[0] and "LOO learned" in lines[0]
    assert lines[2].startswith("| batch-hard | 64 | 50.00 |") and "| - |" in lines[2]
    assert lines[2].endswith("| 25.00 | 3.2 |")


def test_center_bits_splits_every_bit_of_the_training_set_in_half():
    x, _ = clustered(12, 5, seed=8)
    head = build_hash_head(x.shape[1], 16, seed=0)
    # Push every bit off balance first: a large positive bias makes all codes +1.
    kernel, bias = head.get_layer("hash").get_weights()
    head.get_layer("hash").set_weights([kernel, bias + 50.0])
    assert np.all(HashModel(head).encode(x) == 1)
    center_hash_bits(head, x)
    ones = (HashModel(head).encode(x) > 0).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) <= 1 / len(x)), ones
    np.testing.assert_array_equal(head.get_layer("hash").get_weights()[0], kernel)  # bias only
