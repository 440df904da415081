"""The hash head: codes, packing, save/load bit-exact, version and backbone checks, CLI hook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import retrieval.cli as cli
from retrieval.backbones import Backbone
from retrieval.hashing import (
    BIT_CHOICES,
    CONFIG_FILE,
    HashModel,
    HashModelError,
    build_hash_head,
    load_hash_model,
    read_model_config,
    sign_codes,
)
from retrieval.ranking import unpack_bits
from retrieval.storage import content_hash
from tests import builders

FEATURES = np.random.default_rng(0).standard_normal((50, 24)).astype(np.float32)


def model_for(feature_dim: int = 24, bits: int = 32, projection: int | None = None) -> HashModel:
    head = build_hash_head(feature_dim, bits, projection, seed=3)
    return HashModel(head, {"backbone": "tiny", "feature_key": "tiny-key", "pooling": "avg"})


@pytest.mark.parametrize("bits", BIT_CHOICES)
def test_codes_are_signs_and_pack_to_k_over_8_bytes(bits: int) -> None:
    model = model_for(bits=bits)
    relaxed = model.relaxed(FEATURES)
    assert relaxed.shape == (50, bits) and np.all(np.abs(relaxed) < 1)
    codes = model.encode(FEATURES)
    assert set(np.unique(codes)) <= {-1, 1}
    assert np.array_equal(codes, np.where(relaxed > 0, 1, -1))
    packed = model.encode_packed(FEATURES)
    assert packed.dtype == np.uint8 and packed.shape == (50, bits // 8)
    assert np.array_equal(unpack_bits(packed, bits), codes > 0)


def test_projection_variant_and_bad_bits() -> None:
    model = model_for(projection=40)
    assert model.head.get_layer("projection").units == 40
    assert model.encode(FEATURES).shape == (50, 32)
    with pytest.raises(ValueError, match="bits"):
        build_hash_head(24, 24)
    with pytest.raises(HashModelError, match="24-d"):
        model.encode(FEATURES[:, :10])


def test_sign_of_zero_is_minus_one() -> None:
    assert sign_codes(np.array([[0.0, 1e-7, -1e-7]])).tolist() == [[-1, 1, -1]]


def test_one_set_of_weights_for_anchor_positive_negative() -> None:
    model = model_for()
    batch = model.relaxed(FEATURES)
    each = [model.relaxed(FEATURES[i : i + 1])[0] for i in (0, 1, 2)]
    assert np.allclose(batch[:3], np.stack(each), atol=1e-6)


def test_save_load_bit_exact(tmp_path: Path) -> None:
    model = model_for(projection=16)
    model.config["training"] = {"dataset": "demo", "train_groups": [1, 2]}
    model.save(tmp_path / "m")
    loaded = load_hash_model(tmp_path / "m", backbone="tiny", feature_key="tiny-key")
    assert np.array_equal(loaded.relaxed(FEATURES), model.relaxed(FEATURES))
    assert np.array_equal(loaded.encode_packed(FEATURES), model.encode_packed(FEATURES))
    config = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert config["bits"] == 32 and config["feature_dim"] == 24 and config["format_version"] == 1
    assert config["training"]["train_groups"] == [1, 2] and config["backbone"] == "tiny"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "head.keras"]


def test_load_refuses_other_version_and_other_features(tmp_path: Path) -> None:
    model_for().save(tmp_path / "m")
    with pytest.raises(HashModelError, match="other_backbone features"):
        load_hash_model(tmp_path / "m", backbone="other_backbone", feature_key="tiny-key")
    with pytest.raises(HashModelError, match="cannot encode"):
        load_hash_model(tmp_path / "m", feature_key="tiny-avg-other-weights")
    with pytest.raises(HashModelError, match="24-d"):
        load_hash_model(tmp_path / "m", feature_dim=2048)
    path = tmp_path / "m" / CONFIG_FILE
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(HashModelError, match=r"format version 99.*reads version 1"):
        load_hash_model(tmp_path / "m")
    with pytest.raises(HashModelError, match="not a hash model directory"):
        read_model_config(tmp_path / "nowhere")


# --- evaluate --model (stand-in backbone, untrained head: the plumbing, not the quality) -------


@pytest.fixture
def tiny_backbone() -> Backbone:
    return builders.tiny_backbone()


def colour_folder(root: Path, seed: int = 0, groups: int = 3) -> Path:
    """``groups`` sub-folders of 4 noise images, each group saturating its own colour."""
    rng = np.random.default_rng(seed)
    for g in range(groups):
        (root / f"group{g}").mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)
            pixels[..., g % 3] = 255 - 40 * (g // 3)
            Image.fromarray(pixels).save(root / f"group{g}" / f"{i}.png")
    return root


@pytest.fixture
def trained_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_backbone: Backbone):
    """A model directory 'trained' on folder ``train``, and the CLI using the tiny backbone."""
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "_load_backbone_for_model", lambda args, config: tiny_backbone)
    train = colour_folder(tmp_path / "train", seed=0)
    model = HashModel(
        build_hash_head(8, 16),
        {
            "backbone": "tiny",
            "feature_key": tiny_backbone.cache_key,
            "training": {
                "dataset": f"folder:{train}",
                "train_groups": [0, 1, 2],
                "train_image_hashes": [content_hash(p)[:16] for p in train.rglob("*.png")],
            },
        },
    )
    model.save(tmp_path / "model")
    return tmp_path


def evaluate(root: Path, *extra: str) -> list[dict]:
    out = root.parent / "out.json"
    argv = ["evaluate", "--dataset", f"folder:{root}", "--model", str(root.parent / "model")]
    assert cli.main([*argv, "--no-store", "--json", str(out), *extra]) == 0
    records = json.loads(out.read_text())
    return records if isinstance(records, list) else [records]


def test_evaluate_learned_beside_baselines(trained_on: Path, capsys) -> None:
    other = colour_folder(trained_on / "other", seed=1)
    records = evaluate(other, "--compare", "float,lsh,learned")
    assert [(r["method"], r["bits"]) for r in records] == [
        ("float", None),
        ("lsh", 16),  # the model's code length
        ("learned", 16),
    ]
    learned = records[-1]
    assert learned["train_eval"] is False and learned["backbone"] == "tiny"
    assert learned["model"]["training_dataset"].startswith("folder:")
    assert 0 <= learned["protocols"]["default"]["map"] <= 1
    assert "| learned |" in capsys.readouterr().out
    assert [r["method"] for r in evaluate(other)] == ["learned"]  # --model alone: learned


def test_evaluate_refuses_training_data_unless_allowed(trained_on: Path) -> None:
    train = trained_on / "train"
    with pytest.raises(SystemExit, match=r"refusing.*trained on 'folder:"):
        evaluate(train)
    # The same images under another name are still training data.
    copy = shutil.copytree(train, trained_on / "copy")
    with pytest.raises(SystemExit, match="12 of its 12 images were training images"):
        evaluate(copy)
    (record,) = evaluate(train, "--allow-train-eval")
    assert record["train_eval"] is True and record["method"] == "learned"


def test_evaluate_refuses_mismatched_features_and_learned_without_model(
    trained_on: Path, monkeypatch: pytest.MonkeyPatch, tiny_backbone: Backbone
) -> None:
    other = colour_folder(trained_on / "other", seed=1)
    wide = Backbone("tiny", tiny_backbone.model, 32, 8, "gem", "center-crop", "test")
    monkeypatch.setattr(cli, "_load_backbone_for_model", lambda args, config: wide)
    with pytest.raises(SystemExit, match="cannot encode tiny features"):
        evaluate(other)
    with pytest.raises(SystemExit, match="needs a trained model"):
        cli.main(["evaluate", "--dataset", f"folder:{other}", "--compare", "float,learned"])
