"""Copydays-style augmentation, dataset expansion and the embedded demo collection."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.datasets.augment import (
    CROP_AREA,
    OPS,
    augment_view,
    crop_box,
    expand_cli,
    expand_dataset,
    op_crop,
)
from retrieval.datasets.base import RetrievalDataset
from retrieval.datasets.demo import SOURCES, build_demo_collection
from retrieval.datasets.manifest import load_manifest


def _photo(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """A small textured RGB image: gradients plus blocks, so ops have something to change."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    blocks = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3))
    image = (image + np.kron(blocks, np.ones((16, 16, 1)))[:height, :width]) // 2
    return image.astype(np.uint8)


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _dataset(tmp_path: Path, groups: list[int] | None, corrupt: bool = False) -> RetrievalDataset:
    source = tmp_path / "source"
    source.mkdir(parents=True)
    paths = []
    for i in range(3):
        path = source / f"img{i}.png"
        Image.fromarray(_photo(seed=i)).save(path)
        paths.append(path)
    if corrupt:
        paths[1].write_bytes(b"this is not an image")
    return RetrievalDataset(
        name="tiny",
        root=source,
        image_paths=paths,
        image_ids=[p.name for p in paths],
        queries=[],
        groups=groups,
    )


def test_augment_view_is_deterministic_per_seed() -> None:
    image = _photo()
    first = [augment_view(image, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(first[0][0], first[1][0])
    assert first[0][1] == first[1][1]
    others = [augment_view(image, np.random.default_rng(seed))[0] for seed in range(8, 12)]
    assert any(o.shape != first[0][0].shape or not np.array_equal(o, first[0][0]) for o in others)


def test_augment_view_chains_one_to_three_known_ops() -> None:
    image = _photo()
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for _ in range(60):
        view, names = augment_view(image, rng)
        assert 1 <= len(names) <= 3 and len(set(names)) == len(names)
        assert set(names) <= set(OPS)
        assert view.dtype == np.uint8 and view.ndim == 3 and view.shape[2] == 3
        seen.update(names)
    assert seen == set(OPS)


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_op_gives_a_sensible_rgb_image(name: str) -> None:
    image = Image.fromarray(_photo())
    for seed in range(5):
        out = OPS[name](image, np.random.default_rng(seed))
        array = np.asarray(out)
        assert out.mode == "RGB" and array.dtype == np.uint8 and array.shape[2] == 3
        # No op explodes or collapses the image: rotations expand by at most sqrt(2).
        assert min(out.size) >= 8 and max(out.size) <= 2 * max(image.size)
        if name not in ("crop", "scale", "rotate", "rotate90"):
            assert out.size == image.size


def test_ops_change_the_pixels() -> None:
    image = Image.fromarray(_photo())
    for name, op in OPS.items():
        out = np.asarray(op(image, np.random.default_rng(3)))
        if out.shape == np.asarray(image).shape:
            assert not np.array_equal(out, np.asarray(image)), name


def test_crop_keeps_10_to_80_percent_of_the_area() -> None:
    rng = np.random.default_rng(0)
    for width, height in [(640, 480), (480, 640), (100, 100), (1000, 120)]:
        fractions = []
        for _ in range(300):
            left, top, right, bottom = crop_box(width, height, rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            fractions.append((right - left) * (bottom - top) / (width * height))
        # Rounding to whole pixels moves the area by at most about one row or column.
        slack = 1.5 / min(width, height)
        assert CROP_AREA[0] - slack <= min(fractions) and max(fractions) <= CROP_AREA[1] + slack
        assert max(fractions) - min(fractions) > 0.5  # the whole range is used
    out = op_crop(Image.fromarray(_photo()), np.random.default_rng(1))
    assert 0.09 <= out.width * out.height / (128 * 96) <= 0.81


def test_expand_dataset_with_groups(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, groups=[5, 5, 9])
    manifest = expand_dataset(dataset, per_image=2, out_dir=tmp_path / "out", seed=1)
    assert manifest == tmp_path / "out" / "manifest.csv"
    rows = _read_manifest(manifest)
    assert len(rows) == 3 * 3
    assert len(list((tmp_path / "out" / "images").glob("*.jpg"))) == 9
    assert [r["group"] for r in rows] == ["5"] * 6 + ["9"] * 3
    queries = [r["path"] for r in rows if r["is_query"] == "1"]
    assert queries == ["images/00000_img0.png_orig.jpg", "images/00002_img2.png_orig.jpg"]
    for row in rows:
        with Image.open(manifest.parent / row["path"]) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
    assert not (tmp_path / "out" / "skipped.txt").exists()
    assert not list((tmp_path / "out").rglob("*.tmp"))

    loaded = load_manifest(manifest)
    assert len(loaded) == 9 and len(loaded.queries) == 2
    assert len(loaded.queries[0].ground_truth["default"].positives) == 5


def test_expand_dataset_without_groups_or_originals(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, groups=None)
    manifest = expand_dataset(dataset, 2, tmp_path / "out", include_originals=False)
    rows = _read_manifest(manifest)
    assert len(rows) == 6 and not any("orig" in r["path"] for r in rows)
    assert [r["group"] for r in rows] == ["0", "0", "1", "1", "2", "2"]
    assert [r["is_query"] for r in rows] == ["1", "0"] * 3


def test_expand_again_into_the_same_folder_and_from_a_spec(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = expand_dataset(_dataset(tmp_path, groups=None), 3, out)
    (out / "images" / "notes.jpg").write_bytes(b"not ours")
    second = expand_cli(f"manifest:{first}", 1, out, seed=0)
    assert second == first
    listed = {row["path"] for row in _read_manifest(second)}
    on_disk = {f"images/{p.name}" for p in (out / "images").iterdir()}
    # The 12 images of the first run, now sources, are kept beside their 12 views.
    assert len(listed) == 24 and len(on_disk) == 12 + 24 + 1
    assert "images/notes.jpg" in on_disk and listed < on_disk

    third = expand_dataset(_dataset(tmp_path / "again", groups=None), 1, out)
    on_disk = {f"images/{p.name}" for p in (out / "images").iterdir()}
    assert on_disk == {row["path"] for row in _read_manifest(third)} | {"images/notes.jpg"}


def test_expand_dataset_is_deterministic(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, groups=None)
    runs = {}
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        manifest = expand_dataset(dataset, 2, tmp_path / name, seed=seed)
        runs[name] = {
            row["path"]: (manifest.parent / row["path"]).read_bytes()
            for row in _read_manifest(manifest)
        }
    assert runs["a"] == runs["b"]
    assert runs["a"].keys() == runs["c"].keys() and runs["a"] != runs["c"]


def test_expand_dataset_skips_and_reports_a_corrupt_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = _dataset(tmp_path, groups=[0, 0, 1], corrupt=True)
    with caplog.at_level(logging.WARNING, logger="retrieval.datasets.augment"):
        manifest = expand_dataset(dataset, 1, tmp_path / "out")
    rows = _read_manifest(manifest)
    assert [r["path"] for r in rows] == [
        "images/00000_img0.png_orig.jpg",
        "images/00000_img0.png_v00.jpg",
        "images/00002_img2.png_orig.jpg",
        "images/00002_img2.png_v00.jpg",
    ]
    assert "img1.png" in (tmp_path / "out" / "skipped.txt").read_text()
    assert "img1.png" in caplog.text
    # The other images' views do not depend on the skipped one.
    clean = expand_dataset(_dataset(tmp_path / "clean", groups=[0, 0, 1]), 1, tmp_path / "ref")
    assert (clean.parent / rows[3]["path"]).read_bytes() == (
        manifest.parent / rows[3]["path"]
    ).read_bytes()


def test_build_demo_collection(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    manifest = build_demo_collection(out, per_image=1, seed=0)
    dataset = load_manifest(manifest)
    names = {s.name for s in SOURCES}
    groups = {s.group for s in SOURCES}
    assert len(dataset) == 2 * len(names)
    assert len(set(dataset.groups or [])) == len(groups) == len(names) - 1
    assert len(dataset.queries) == len(groups)
    # The stereo pair is one group: its query has the other side and both views as positives.
    (stereo,) = [q for q in dataset.queries if "motorcycle" in q.name]
    positives = stereo.ground_truth["default"].positives
    assert sorted(dataset.image_ids[i].split("_", 1)[1] for i in positives) == [
        "motorcycle_left_v00.jpg",
        "motorcycle_right_orig.jpg",
        "motorcycle_right_v00.jpg",
    ]
    for path in dataset.image_paths:
        with Image.open(path) as image:
            assert max(image.size) <= 640 * 2
    info = json.loads((out / "demo.json").read_text())
    assert info["params"]["per_image"] == 1 and info["images"] == len(dataset)

    # Same parameters: nothing is rebuilt. Other parameters: rebuilt in place.
    stamp = manifest.stat().st_mtime_ns
    assert build_demo_collection(out, per_image=1, seed=0) == manifest
    assert manifest.stat().st_mtime_ns == stamp
    build_demo_collection(out, per_image=0, seed=0)
    assert len(_read_manifest(manifest)) == len(names)
    assert not [p for p in tmp_path.iterdir() if p.name != "demo"]  # no build leftovers


def test_build_demo_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        build_demo_collection(tmp_path, per_image=0)
    assert (tmp_path / "mine.txt").read_text() == "precious"
