"""The embedded demo collection: real photos shipped by installed packages, expanded offline.

Sources are the photos that scikit-image, scikit-learn and matplotlib ship inside their wheels
(no download). Each becomes a group of its original plus Copydays-style views
(:mod:`retrieval.datasets.augment`); the two stereo motorcycle images share one group.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.config import demo_dir
from retrieval.datasets.augment import expand_dataset
from retrieval.datasets.base import RetrievalDataset

logger = logging.getLogger(__name__)

DEMO_VERSION = 1  # bump when the sources or the augmentation change, to rebuild old demos
MAX_SIDE = 640  # sources are downscaled so that their long side is at most this
INFO_NAME = "demo.json"


@dataclass(frozen=True)
class DemoSource:
    """One source photo: its name, its group, its licence and how to load it."""

    name: str
    group: str
    licence: str
    load: Callable[[], np.ndarray]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data  # here: skimage is slow to import and only needed to build

        return getattr(data, name)()

    return load


def _stereo(side: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return data.stereo_motorcycle()[side]

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        # Read the file in place: importing sklearn.datasets takes seconds (it loads scipy).
        spec = importlib.util.find_spec("sklearn")
        if spec is not None and spec.origin is not None:
            path = Path(spec.origin).parent / "datasets" / "images" / filename
            if path.is_file():
                with Image.open(path) as image:
                    return np.asarray(image.convert("RGB"))
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / filename
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    return load


# Licences as the shipping package's documentation states them ("not stated" where it does not).
# Left out on purpose: skimage cell (a computed phase image), microaneurysms (102 px), horse,
# logo, colorwheel, chessboard, phantom (drawings); matplotlib's clip-art and logo PNGs.
SOURCES: tuple[DemoSource, ...] = (
    DemoSource("astronaut", "astronaut", "public domain (NASA)", _skimage("astronaut")),
    DemoSource("camera", "camera", "CC0 (Lav Varshney)", _skimage("camera")),
    DemoSource("chelsea", "chelsea", "CC0 (Stefan van der Walt)", _skimage("chelsea")),
    DemoSource("coffee", "coffee", "CC0 (Rachel Michetti)", _skimage("coffee")),
    DemoSource("rocket", "rocket", "public domain (SpaceX)", _skimage("rocket")),
    DemoSource(
        "hubble_deep_field",
        "hubble_deep_field",
        "public domain (NASA)",
        _skimage("hubble_deep_field"),
    ),
    DemoSource(
        "coins", "coins", "no known copyright restrictions (Brooklyn Museum)", _skimage("coins")
    ),
    DemoSource("brick", "brick", "CC0 (CC0Textures)", _skimage("brick")),
    DemoSource("grass", "grass", "CC0 (linolafett, DeviantArt)", _skimage("grass")),
    DemoSource("gravel", "gravel", "CC0 (CC0Textures)", _skimage("gravel")),
    DemoSource("retina", "retina", "CC0 (Mikael Häggström, Wikimedia)", _skimage("retina")),
    DemoSource(
        "motorcycle_left",
        "motorcycle",
        "not stated (Middlebury 2014 stereo benchmark)",
        _stereo(0),
    ),
    DemoSource(
        "motorcycle_right",
        "motorcycle",
        "not stated (Middlebury 2014 stereo benchmark)",
        _stereo(1),
    ),
    DemoSource("clock", "clock", "public domain (Stefan van der Walt)", _skimage("clock")),
    DemoSource(
        "immunohistochemistry",
        "immunohistochemistry",
        "no known copyright restrictions (CMMI)",
        _skimage("immunohistochemistry"),
    ),
    DemoSource("moon", "moon", "not stated", _skimage("moon")),
    DemoSource("page", "page", "not stated", _skimage("page")),
    DemoSource("text", "text", "public domain (Wikipedia, Corner.png)", _skimage("text")),
    DemoSource("china", "china", "CC BY 2.0 (danielbuechele, Flickr)", _sklearn("china.jpg")),
    DemoSource("flower", "flower", "CC BY 2.0 (vultilion, Flickr)", _sklearn("flower.jpg")),
    DemoSource(
        "grace_hopper",
        "grace_hopper",
        "public domain (U.S. Navy photograph; not stated by matplotlib)",
        _matplotlib("grace_hopper.jpg"),
    ),
)


def _as_rgb(array: np.ndarray, max_side: int | None) -> np.ndarray:
    """Grey or RGBA to RGB uint8, downscaled so that the long side is at most ``max_side``."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    image = Image.fromarray(array).convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return np.array(image)


def _loaded_sources(max_side: int | None) -> list[tuple[DemoSource, np.ndarray]]:
    loaded = []
    for source in SOURCES:
        try:
            loaded.append((source, _as_rgb(source.load(), max_side)))
        except Exception as error:  # a package version without the file: build without it
            logger.warning("demo source %s unavailable, left out: %s", source.name, error)
    return loaded


def demo_sources(max_side: int | None = MAX_SIDE) -> list[tuple[str, np.ndarray]]:
    """The demo's source photos as (name, RGB uint8 array), long side <= ``max_side``."""
    return [(source.name, array) for source, array in _loaded_sources(max_side)]


def _is_current(manifest: Path, info: Path, params: dict[str, int]) -> bool:
    if not (manifest.is_file() and info.is_file()):
        return False
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("params") == params
    except (OSError, ValueError):
        return False


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a non-empty folder that is not a demo collection."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INFO_NAME).exists():
        raise FileExistsError(f"{out_dir} exists and is not a demo collection; not replacing it")


def _swap_in(built: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the finished ``built`` directory (renames only)."""
    if out_dir.exists():
        _check_replaceable(out_dir)
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-old-", dir=out_dir.parent))
        old.rmdir()
        os.replace(out_dir, old)
        try:
            os.replace(built, out_dir)
        except OSError:
            if not out_dir.exists():
                os.replace(old, out_dir)  # put the previous collection back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, out_dir)


def build_demo_collection(
    out_dir: Path | None = None, per_image: int = 8, seed: int = 0, force: bool = False
) -> Path:
    """Build the demo (sources plus ``per_image`` views of each) if needed; returns its manifest.

    Written to ``out_dir`` (default ``data/demo``) with its parameters in ``demo.json``; a build
    with the same parameters is reused. Built in a temporary directory, then renamed into place.
    """
    out_dir = Path(out_dir) if out_dir is not None else demo_dir()
    manifest, info = out_dir / "manifest.csv", out_dir / INFO_NAME
    params = {"version": DEMO_VERSION, "per_image": per_image, "seed": seed, "max_side": MAX_SIDE}
    if not force and _is_current(manifest, info, params):
        return manifest

    _check_replaceable(out_dir)
    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-build-", dir=out_dir.parent))
    try:
        source_dir = build / "_sources"
        source_dir.mkdir()
        loaded = _loaded_sources(MAX_SIDE)
        group_ids: dict[str, int] = {}
        paths = []
        for index, (source, array) in enumerate(loaded):
            path = source_dir / f"{index:02d}_{source.name}.png"
            Image.fromarray(array).save(path, compress_level=1)  # temporary: fast beats small
            paths.append(path)
            group_ids.setdefault(source.group, len(group_ids))
        sources = RetrievalDataset(
            name="demo-sources",
            root=source_dir,
            image_paths=paths,
            image_ids=[source.name for source, _ in loaded],
            queries=[],
            groups=[group_ids[source.group] for source, _ in loaded],
        )
        built_manifest = expand_dataset(sources, per_image, build, seed=seed)
        shutil.rmtree(source_dir)
        record = {
            "params": params,
            "images": len(built_manifest.read_text(encoding="utf-8").splitlines()) - 1,
            "groups": len(group_ids),
            "build_seconds": round(time.perf_counter() - started, 2),
            "sources": [
                {"name": s.name, "group": group_ids[s.group], "licence": s.licence}
                for s, _ in loaded
            ],
        }
        (build / INFO_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            _swap_in(build, out_dir)
        except OSError:
            # Another process finished the same build first: use theirs.
            if not _is_current(manifest, info, params):
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    logger.info("demo collection built in %s", out_dir)
    return manifest


def load_demo_dataset() -> RetrievalDataset:
    """The demo collection as a dataset named ``demo``, built on first use."""
    from retrieval.datasets.manifest import load_manifest  # here: a sibling loader, used only here

    dataset = load_manifest(build_demo_collection())
    dataset.name = "demo"
    dataset.notes.setdefault(
        "demo", "sample photos of scikit-image, scikit-learn, matplotlib + Copydays-style views"
    )
    return dataset
