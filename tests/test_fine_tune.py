"""End-to-end fine-tuning: fine-tuned backbone weights in the registry, the CLI run, their use."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from retrieval.backbones import (
    WeightsNotFoundError,
    load_backbone,
    trainable_backbone,
)
from retrieval.hashing import BACKBONE_WEIGHTS_FILE, HashModelError, load_hash_model
from retrieval.images import load_for_model

TRAIN_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins")
EVAL_PHOTOS = ("hubble_deep_field", "retina", "brick")


def grouped_photos(root: Path, names: Sequence[str]) -> Path:
    """A folder dataset: one sub-folder per photo holding the photo and its central crop."""
    for name in names:
        image = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        (root / name).mkdir(parents=True)
        image.save(root / name / "a.jpg", quality=90)
        w, h = image.size
        image.crop((w // 8, h // 8, w - w // 8, h - h // 8)).save(root / name / "b.jpg", quality=90)
    return root


def photo_batch(size: int = 224) -> np.ndarray:
    """Two real photos as a (2, size, size, 3) float32 batch."""
    chelsea = Image.fromarray(skdata.chelsea()).resize((size, size))
    coffee = Image.fromarray(skdata.coffee()).resize((size, size))
    return np.stack([np.asarray(chelsea), np.asarray(coffee)]).astype(np.float32)


def test_finetuned_weights_round_trip_under_their_own_cache_key(tmp_path):
    imagenet = load_backbone("efficientnet_lite0")
    original = imagenet.model.get_layer("head_conv").get_weights()[0].copy()
    tuned_copy = trainable_backbone(imagenet)
    assert tuned_copy.model is not imagenet.model and tuned_copy.cache_key == imagenet.cache_key
    layer = tuned_copy.model.get_layer("head_conv")
    layer.set_weights([layer.get_weights()[0] * 1.5])
    path = tmp_path / "tuned.weights.h5"
    tuned_copy.model.save_weights(path)

    tuned = load_backbone("efficientnet_lite0", finetuned=path)
    x = photo_batch()
    expected = np.asarray(tuned_copy.model(x))
    np.testing.assert_allclose(np.asarray(tuned.model(x)), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(imagenet.model(x)), expected, atol=1e-3)
    assert tuned.weights_id.startswith("ft-") and tuned.cache_key != imagenet.cache_key
    assert (tuned.name, tuned.pooling, tuned.feature_dim) == ("efficientnet_lite0", "avg", 1280)
    # The shared ImageNet model was not touched by training the copy.
    np.testing.assert_array_equal(imagenet.model.get_layer("head_conv").get_weights()[0], original)
    # The same file elsewhere (a bundle's copy of the model directory): same key, same model.
    elsewhere = tmp_path / "bundle" / "model" / BACKBONE_WEIGHTS_FILE
    elsewhere.parent.mkdir(parents=True)
    shutil.copy(path, elsewhere)
    assert load_backbone("efficientnet_lite0", finetuned=elsewhere) is tuned
    # Other pooling: its own model and key (the file fits: pooling layers hold no weights).
    max_pooled = load_backbone("efficientnet_lite0", pooling="max", finetuned=path)
    assert max_pooled.cache_key != tuned.cache_key and max_pooled.weights_id == tuned.weights_id


def test_mismatched_or_missing_finetuned_weights_name_the_file(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    small = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    other = tmp_path / "other.weights.h5"
    small.save_weights(other)
    with pytest.raises(WeightsNotFoundError, match=r"other\.weights\.h5.*do not fit"):
        load_backbone("efficientnet_lite0", finetuned=other)
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"not hdf5")
    with pytest.raises(WeightsNotFoundError, match=r"garbage\.weights\.h5"):
        load_backbone("efficientnet_lite0", finetuned=garbage)
    with pytest.raises(WeightsNotFoundError, match=r"not found.*missing\.weights\.h5"):
        load_backbone("efficientnet_lite0", finetuned=tmp_path / "missing.weights.h5")


@pytest.mark.slow
def test_resnet50_finetuned_weights_need_no_imagenet_file(tmp_path, monkeypatch):
    from retrieval.backbones import _pooled
    from retrieval.backbones.resnet50 import (
        WEIGHTS_ENV,
        build_resnet50_architecture,
        resnet50_weights_available,
    )

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert not resnet50_weights_available()
    model = _pooled("resnet50", build_resnet50_architecture(), "avg")  # random weights
    path = tmp_path / "resnet.weights.h5"
    model.save_weights(path)
    tuned = load_backbone("resnet50", finetuned=path)
    x = photo_batch()
    np.testing.assert_allclose(
        np.asarray(tuned.model(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-5
    )
    assert tuned.feature_dim == 2048 and tuned.weights_id.startswith("ft-")
    with pytest.raises(WeightsNotFoundError, match=r"resnet\.weights\.h5"):
        load_backbone("efficientnet_lite0", finetuned=path)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """One tiny ``python -m training --fine-tune`` run; yields (work dir, its summary)."""
    from training.__main__ import build_parser
    from training.pipeline import run_training

    root = tmp_path_factory.mktemp("fine_tune")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIEVAL_CACHE_DIR", str(root / "cache"))
        train = grouped_photos(root / "train", TRAIN_PHOTOS)
        argv = [
            "--dataset", f"folder:{train}", "--backbone", "efficientnet_lite0",
            "--expand-views", "2", "--expand-dir", str(root / "expanded"),
            "--bits", "16", "--val-fraction", "0.34", "--groups-per-batch", "2",
            "--images-per-group", "3", "--batches-per-epoch", "2", "--epochs", "1",
            "--max-train-images", "12", "--keep-last", "--quiet",
            "--out", str(root / "model"), "--fine-tune",
        ]  # fmt: skip
        summary = run_training(build_parser().parse_args(argv))
        yield root, summary


@pytest.mark.slow
def test_fine_tune_run_saves_backbone_weights_and_their_feature_key(fine_tuned):
    root, summary = fine_tuned
    model_dir = root / "model"
    config = json.loads((model_dir / "config.json").read_text())
    training = config["training"]
    assert config["backbone_weights"] == BACKBONE_WEIGHTS_FILE
    assert training["mode"] == "end-to-end fine-tuning"
    imagenet = load_backbone("efficientnet_lite0")
    tuned = load_backbone("efficientnet_lite0", finetuned=model_dir / BACKBONE_WEIGHTS_FILE)
    assert config["feature_key"] == tuned.cache_key != imagenet.cache_key
    assert config["weights_id"] == tuned.weights_id
    assert training["base_feature_key"] == imagenet.cache_key
    # 6 groups x (2 images + 2 views each): 4 training groups (24 images), 2 held out (12);
    # --max-train-images 12 decodes three images of each training group.
    assert training["n_train_images"] == 24 and training["n_fine_tune_images"] == 12
    assert summary["n_fine_tune_images"] == 12 and summary["val_map_images"] == 12
    assert training["config"]["learning_rate"] == pytest.approx(1e-4)
    assert training["config"]["similarity_weight"] == 0.0
    assert summary["steps"] == 2 and summary["seconds_per_step"] > 0
    assert 0.0 <= summary["val_map_start"] <= 1.0 and 0.0 <= summary["val_map_learned"] <= 1.0
    assert (model_dir / "heldout.csv").is_file() and (model_dir / "training_log.csv").is_file()
    assert not (model_dir / "best.weights.h5").exists()  # no second copy of the backbone
    # The backbone moved away from ImageNet; batch norm (frozen) kept its statistics.
    tuned_conv = tuned.model.get_layer("head_conv").get_weights()[0]
    assert np.abs(tuned_conv - imagenet.model.get_layer("head_conv").get_weights()[0]).max() > 1e-6
    for a, b in zip(
        tuned.model.get_layer("head_bn").get_weights(),
        imagenet.model.get_layer("head_bn").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    with h5py.File(model_dir / BACKBONE_WEIGHTS_FILE) as stored:
        assert "layers" in stored
    # The head refuses ImageNet features and takes the fine-tuned ones.
    with pytest.raises(HashModelError, match="fine-tuned"):
        load_hash_model(model_dir, backbone=imagenet.name, feature_key=imagenet.cache_key)
    assert load_hash_model(model_dir, feature_key=tuned.cache_key).bits == 16


@pytest.mark.slow
def test_index_of_a_fine_tuned_model_encodes_with_its_backbone(fine_tuned, monkeypatch):
    from retrieval.search import Searcher, build_index

    root, _ = fine_tuned
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(root / "cache"))
    # Index from a copy of the model directory, then delete the copy: the bundle carries it all.
    copy = root / "model_copy"
    shutil.copytree(root / "model", copy)
    photos = sorted((root / "train").glob("*/a.jpg"))
    report = build_index(copy, photos, root / "index", progress=False)
    shutil.rmtree(copy)
    assert report.added == len(photos) == 6
    searcher = Searcher(root / "index")
    assert (searcher.bundle.model_dir / BACKBONE_WEIGHTS_FILE).is_file()
    assert searcher.backbone.weights_id.startswith("ft-")
    assert searcher.backbone.cache_key == searcher.model.config["feature_key"]
    for photo in photos:
        hits = searcher.search(photo, k=3).hits
        assert Path(hits[0].path) == photo.resolve() and hits[0].distance == 0
    # What encodes the queries is the fine-tuned backbone, not the ImageNet one.
    imagenet = load_backbone("efficientnet_lite0")
    pixels = load_for_model(photos[0], 224, searcher.backbone.resize_mode)
    features, _ = searcher.encode(pixels)
    ours = np.asarray(searcher.backbone.model(pixels[None].astype(np.float32)))
    np.testing.assert_allclose(features, ours, rtol=1e-4, atol=1e-5)
    assert not np.allclose(features, np.asarray(imagenet.model(pixels[None].astype(np.float32))))


@pytest.mark.slow
def test_evaluate_loads_the_fine_tuned_backbone(fine_tuned, monkeypatch, capsys):
    import retrieval.cli

    root, _ = fine_tuned
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(root / "cache"))
    other = grouped_photos(root / "other", EVAL_PHOTOS)
    out = root / "eval.json"
    argv = ["evaluate", "--model", str(root / "model"), "--dataset", f"folder:{other}"]
    assert retrieval.cli.main([*argv, "--no-store", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["method"] == "learned" and record["bits"] == 16
    assert (
        record["feature_key"] == json.loads((root / "model/config.json").read_text())["feature_key"]
    )
    assert "-ft-" in record["feature_key"] and record["protocols"]
    assert all(0.0 <= scores["map"] <= 1.0 for scores in record["protocols"].values())
    # A model directory that lost its backbone weights is refused with a clear message.
    broken = root / "broken"
    shutil.copytree(root / "model", broken)
    (broken / BACKBONE_WEIGHTS_FILE).unlink()
    with pytest.raises(SystemExit, match=r"backbone\.weights\.h5.*missing"):
        retrieval.cli.main(["evaluate", "--model", str(broken), "--dataset", f"folder:{other}"])


def test_fine_tune_refuses_the_similarity_term(tmp_path):
    from training.__main__ import main

    argv = ["--dataset", "folder:/nowhere", "--out", str(tmp_path / "m"), "--fine-tune"]
    with pytest.raises(SystemExit, match=r"similarity-weight.*fine-tune"):
        main([*argv, "--similarity-weight", "0.5"])


def test_capped_rows_spread_over_groups_with_two_images_at_least():
    from training.pipeline import capped_rows

    groups = np.repeat(np.arange(5), 4)
    rows = np.arange(20)
    assert np.array_equal(capped_rows(rows, groups, None), rows)
    assert np.array_equal(capped_rows(rows, groups, 20), rows)
    kept = capped_rows(rows, groups, 10, seed=0)
    assert np.array_equal(np.bincount(groups[kept], minlength=5), [2, 2, 2, 2, 2])
    kept = capped_rows(rows, groups, 7, seed=0)
    assert len(kept) == 7 and np.array_equal(kept, np.sort(kept))
    assert sorted(np.bincount(groups[kept], minlength=5).tolist()) == [0, 0, 2, 2, 3]
    assert np.array_equal(capped_rows(rows, groups, 7, seed=0), kept)
    assert not np.array_equal(capped_rows(rows, groups, 7, seed=1), kept)


def test_model_directory_names_its_backbone_weights(tmp_path):
    from retrieval.hashing import HashModel, build_hash_head

    config = {"backbone": "efficientnet_lite0", "backbone_weights": BACKBONE_WEIGHTS_FILE}
    unsaved = HashModel(build_hash_head(8, 16), dict(config))
    with pytest.raises(HashModelError, match="not loaded from a directory"):
        unsaved.backbone_weights()
    unsaved.save(tmp_path / "model")
    with pytest.raises(HashModelError, match=r"backbone\.weights\.h5.*missing"):
        load_hash_model(tmp_path / "model").backbone_weights()
    (tmp_path / "model" / BACKBONE_WEIGHTS_FILE).write_bytes(b"weights")
    loaded = load_hash_model(tmp_path / "model")
    assert loaded.directory == tmp_path / "model"
    assert loaded.backbone_weights() == tmp_path / "model" / BACKBONE_WEIGHTS_FILE
    assert HashModel(build_hash_head(8, 16), {"backbone": "x"}).backbone_weights() is None
