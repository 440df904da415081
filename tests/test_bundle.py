"""Index bundles: round trip, incremental updates, refusal of damaged bundles, atomic writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from retrieval import bundle as bundle_module
from retrieval.bundle import (
    BundleError,
    add_to_bundle,
    load_bundle,
    remove_from_bundle,
    write_bundle,
)
from retrieval.ranking import rank_by_hamming

MODEL = {"backbone": "efficientnet_lite0", "feature_key": "k-1", "model_dir": "models/h64"}


def make_bundle(path: Path, n: int = 40, seed: int = 0, features: bool = True):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    feats = rng.normal(size=(n, 12)).astype(np.float32) if features else None
    paths = [f"img/{i:03d}.jpg" for i in range(n)]
    hashes = [hashlib.sha256(p.encode()).hexdigest() for p in paths]
    groups = [i // 4 for i in range(n)]
    built = write_bundle(
        path, codes, model=MODEL, paths=paths, content_hashes=hashes, groups=groups, features=feats
    )
    return built, codes, feats


def visible_entries(parent: Path) -> list[str]:
    """What sits beside a bundle, lock file excepted."""
    return sorted(p.name for p in parent.iterdir() if not p.name.endswith(".lock"))


def test_round_trip(tmp_path):
    target = tmp_path / "bundle"
    built, codes, feats = make_bundle(target)
    assert built.path == target
    loaded = load_bundle(target)
    np.testing.assert_array_equal(loaded.codes, codes)
    np.testing.assert_array_equal(loaded.features, feats)
    assert loaded.bits == 64 and loaded.model == MODEL and len(loaded) == 40
    assert loaded.metadata[5]["path"] == "img/005.jpg" and loaded.metadata[5]["group"] == 1
    assert set(loaded.metadata[0]) == {"id", "path", "content_hash", "group", "added"}
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["counts"]["rows"] == 40
    for name, entry in manifest["files"].items():  # every file's checksum is recorded
        assert entry["sha256"] == hashlib.sha256((target / name).read_bytes()).hexdigest()
    # The index built from the bundle ranks like the numpy reference.
    _, ids = loaded.index().search(codes[:5], 40)
    np.testing.assert_array_equal(ids, loaded.ids[rank_by_hamming(codes[:5], codes)])
    assert loaded.lookup([ids[0, 0], -1])[0]["id"] == ids[0, 0]


def test_content_hashes_come_from_the_storage_module(tmp_path):
    from retrieval.storage import content_hash

    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.jpg")
        files[-1].write_bytes(bytes([i]) * 100)
    built = write_bundle(
        tmp_path / "b", np.zeros((3, 2), np.uint8), model={}, paths=files, features=None
    )
    assert [row["content_hash"] for row in built.metadata] == [content_hash(f) for f in files]


def test_add_and_remove_make_new_consistent_bundles(tmp_path):
    target = tmp_path / "bundle"
    _, codes, feats = make_bundle(target, n=30)
    rng = np.random.default_rng(9)
    extra = rng.integers(0, 256, (5, 8), dtype=np.uint8)
    grown = add_to_bundle(
        target,
        extra,
        paths=[f"new/{i}.jpg" for i in range(5)],
        content_hashes=["h"] * 5,
        features=rng.normal(size=(5, 12)).astype(np.float32),
    )
    assert grown.ids.tolist() == list(range(35)) and len(grown) == 35
    np.testing.assert_array_equal(grown.codes[30:], extra)

    shrunk = remove_from_bundle(target, [3, 31])
    assert len(shrunk) == 33 and set(shrunk.removed) == {3, 31}
    index = load_bundle(target).index()
    _, found = index.search(np.concatenate([codes[3:4], extra[1:2]]), 35)
    assert not np.isin(found, [3, 31]).any()
    assert (found >= 0).sum() == 2 * 33

    compacted = remove_from_bundle(target, [4], compact=True)
    assert len(compacted.codes) == 32 and set(compacted.removed) == {3, 4, 31}
    # Ids are never reused, even after their rows are gone.
    again = add_to_bundle(
        target, extra[:1], paths=["x.jpg"], content_hashes=["h"], features=feats[:1]
    )
    assert again.ids[-1] == 35
    with pytest.raises(ValueError, match="already used"):
        add_to_bundle(
            target, extra[:1], paths=["y.jpg"], content_hashes=["h"], features=feats[:1], ids=[3]
        )
    with pytest.raises(ValueError, match="not in the bundle"):
        remove_from_bundle(target, [999])
    with pytest.raises(ValueError, match="bits"):
        add_to_bundle(target, np.zeros((1, 4), np.uint8), paths=["z"], content_hashes=["h"])


def test_truncated_codes_refused(tmp_path):
    target = tmp_path / "bundle"
    make_bundle(target)
    data = (target / "codes.npy").read_bytes()
    (target / "codes.npy").write_bytes(data[:-16])
    with pytest.raises(BundleError, match=r"codes\.npy.*truncated"):
        load_bundle(target)
    # Same size, altered bytes: caught by the checksum.
    (target / "codes.npy").write_bytes(data[:-16] + b"\0" * 16)
    with pytest.raises(BundleError, match=r"codes\.npy: sha256"):
        load_bundle(target)


def test_tampered_metadata_refused(tmp_path):
    target = tmp_path / "bundle"
    make_bundle(target)
    text = (target / "metadata.jsonl").read_text()
    (target / "metadata.jsonl").write_text(text.replace("img/007.jpg", "img/008.jpg"))
    with pytest.raises(BundleError, match=r"metadata\.jsonl: sha256 differs"):
        load_bundle(target)
    # Without checksum verification, a dropped row is still caught by the row count.
    lines = text.splitlines(keepends=True)
    (target / "metadata.jsonl").write_text("".join(lines[:-1]) + " " * len(lines[-1]))
    with pytest.raises(BundleError, match=r"metadata\.jsonl: 39 rows, codes\.npy has 40"):
        load_bundle(target, verify=False)


def test_wrong_version_and_missing_manifest_refused(tmp_path):
    target = tmp_path / "bundle"
    make_bundle(target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["format_version"] = 2
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest\.json: format version 2 is not supported"):
        load_bundle(target)
    (target / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        load_bundle(target)
    with pytest.raises(BundleError, match="no bundle directory"):
        load_bundle(tmp_path / "nowhere")


def test_missing_features_file_refused(tmp_path):
    target = tmp_path / "bundle"
    make_bundle(target)
    (target / "features.npy").unlink()
    with pytest.raises(BundleError, match=r"features\.npy: missing"):
        load_bundle(target)


@pytest.mark.parametrize("exchange", [True, False])
def test_interrupted_write_leaves_old_bundle(tmp_path, monkeypatch, exchange):
    target = tmp_path / "bundle"
    _, codes, _ = make_bundle(target, n=20)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    if not exchange:  # the two-rename fallback used where renameat2 is missing
        monkeypatch.setattr(bundle_module, "_exchange", lambda a, b: False)
    written = []

    def failing_jsonl(path, rows):
        written.extend(p.name for p in path.parent.iterdir())
        raise KeyboardInterrupt("killed halfway")

    monkeypatch.setattr(bundle_module, "_write_jsonl", failing_jsonl)
    with pytest.raises(KeyboardInterrupt):
        make_bundle(target, n=25, seed=1)
    assert "codes.npy" in written  # it really died after writing some files
    assert visible_entries(tmp_path) == ["bundle"]  # no temp dir left beside it
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    np.testing.assert_array_equal(load_bundle(target).codes, codes)

    monkeypatch.undo()
    if not exchange:
        monkeypatch.setattr(bundle_module, "_exchange", lambda a, b: False)
    make_bundle(target, n=25, seed=1)  # a later write succeeds and replaces it
    assert len(load_bundle(target)) == 25 and visible_entries(tmp_path) == ["bundle"]


def test_stale_temp_dir_is_not_a_bundle_and_is_cleared(tmp_path):
    target = tmp_path / "bundle"
    make_bundle(target)
    stale = tmp_path / ".bundle.tmp-dead"  # what a SIGKILLed writer leaves
    stale.mkdir()
    (stale / "codes.npy").write_bytes(b"partial")
    with pytest.raises(BundleError, match="missing"):
        load_bundle(stale)
    remove_from_bundle(target, [0])
    assert not stale.exists()


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"x")
    with pytest.raises(BundleError, match="refusing to replace"):
        make_bundle(photos)
    assert (photos / "cat.jpg").exists()


def test_model_directory_travels_with_the_bundle(tmp_path):
    model = tmp_path / "model_src"
    model.mkdir()
    (model / "config.json").write_text('{"bits": 32}')
    (model / "head.keras").write_bytes(b"weights" * 100)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (6, 4), dtype=np.uint8)
    paths = [f"img{i}.jpg" for i in range(6)]
    hashes = [f"{i:064x}" for i in range(6)]
    target = tmp_path / "bundle"
    built = write_bundle(
        target, codes, model={"bits": 32}, paths=paths, content_hashes=hashes, model_dir=model
    )
    assert built.model_dir == target / "model"
    assert (built.model_dir / "head.keras").read_bytes() == b"weights" * 100
    # Updates carry the model over unchanged, still checksummed.
    extra = rng.integers(0, 256, (2, 4), dtype=np.uint8)
    grown = add_to_bundle(target, extra, paths=["a.jpg", "b.jpg"], content_hashes=hashes[:2])
    shrunk = remove_from_bundle(target, [0], compact=True)
    assert grown.model_dir is not None and shrunk.model_dir is not None
    assert json.loads((shrunk.model_dir / "config.json").read_text()) == {"bits": 32}
    (target / "model" / "head.keras").write_bytes(b"tampered" * 100)
    with pytest.raises(BundleError, match=r"model/head\.keras"):
        load_bundle(target)
