"""Feature extraction: order kept, bad files skipped and listed, cache hit and invalidation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.backbones import Backbone
from retrieval.features import FeatureCache, embed_image, extract_features
from retrieval.storage import content_hash
from tests import builders


@pytest.fixture(scope="module")
def tiny_backbone() -> Backbone:
    return builders.tiny_backbone()


def _write_images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_extract_keeps_order_and_skips_bad_files(tmp_path: Path, tiny_backbone) -> None:
    good = _write_images(tmp_path, 5)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"\x00garbage")
    paths = [good[0], tmp_path / "empty.jpg", *good[1:3], tmp_path / "junk.jpg"]
    paths += [tmp_path / "gone.jpg", *good[3:]]
    result = extract_features(paths, tiny_backbone, batch_size=2, cache=False, progress=False)
    assert result.paths == [str(p) for p in good]
    assert result.indices.tolist() == [0, 2, 3, 6, 7]
    assert result.content_hashes == [content_hash(p) for p in good]
    assert result.features.shape == (5, 8) and result.features.dtype == np.float32
    skipped = dict(result.skipped)
    assert set(skipped) == {str(tmp_path / n) for n in ("empty.jpg", "junk.jpg", "gone.jpg")}
    assert "empty" in skipped[str(tmp_path / "empty.jpg")]
    # Each row is the feature of its own image, whatever the batch it was decoded in.
    for path, row in zip(good, result.features, strict=True):
        np.testing.assert_allclose(embed_image(path, tiny_backbone), row, rtol=1e-5, atol=1e-6)


def test_cache_reuses_vectors_and_recomputes_changed_images(tmp_path: Path, tiny_backbone) -> None:
    paths = _write_images(tmp_path, 4)
    cache = FeatureCache(tiny_backbone.cache_key, root=tmp_path / "cache")
    first = extract_features(paths, tiny_backbone, cache=cache, progress=False)
    assert first.computed == 4
    again = extract_features(paths, tiny_backbone, cache=cache, progress=False)
    assert again.computed == 0
    np.testing.assert_array_equal(first.features, again.features)

    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(paths[1])  # edit one image
    changed = extract_features(paths, tiny_backbone, cache=cache, progress=False)
    assert changed.computed == 1
    assert not np.allclose(changed.features[1], first.features[1])
    np.testing.assert_array_equal(changed.features[[0, 2, 3]], first.features[[0, 2, 3]])


def test_cache_survives_a_corrupt_entry(tmp_path: Path, tiny_backbone) -> None:
    paths = _write_images(tmp_path, 2)
    cache = FeatureCache(tiny_backbone.cache_key, root=tmp_path / "cache")
    extract_features(paths, tiny_backbone, cache=cache, progress=False)
    entries = sorted(cache.directory.rglob("*.npy"))
    assert len(entries) == 2
    entries[0].write_bytes(entries[0].read_bytes()[:20])  # a half-written cache file
    result = extract_features(paths, tiny_backbone, cache=cache, progress=False)
    assert result.computed == 1 and len(result.paths) == 2


def test_boxes_crop_before_resizing(tmp_path: Path, tiny_backbone) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 255
    Image.fromarray(image).save(tmp_path / "half.png")
    path = tmp_path / "half.png"
    result = extract_features(
        [path, path, path],
        tiny_backbone,
        boxes=[None, (0, 0, 31, 64), (33, 0, 64, 64)],
        cache=FeatureCache("boxes", root=tmp_path / "cache"),
        progress=False,
    )
    left, right = result.features[1], result.features[2]
    assert not np.allclose(left, right)
    np.testing.assert_allclose(
        left, embed_image(path, tiny_backbone, box=(0, 0, 31, 64)), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="boxes for"):
        extract_features([path], tiny_backbone, boxes=[None, None], cache=False)


def test_progress_callback_counts_every_image(tmp_path: Path, tiny_backbone) -> None:
    paths = _write_images(tmp_path, 5)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    seen: list[tuple[int, int]] = []
    extract_features(
        [*paths, tmp_path / "bad.jpg"],
        tiny_backbone,
        batch_size=2,
        cache=False,
        progress=False,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(2, 6), (4, 6), (6, 6)]  # bad files count as done too
