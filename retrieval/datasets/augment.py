"""Copydays-style "expanded" datasets: seeded random views of every image, grouped with it.

Each view applies a short chain (1-3) of distortions in the style of INRIA Copydays: crops of
10-80 % of the area, rotations, scaling, JPEG at quality 3-75, colour changes, blur, noise,
perspective warps and occlusions. Everything is drawn from a ``numpy.random.Generator``, so a
seed reproduces the same views byte for byte.

An expanded dataset is a manifest (``path,group,is_query``, paths relative to it) with the
original (re-saved as JPEG) and the views of every database image. Groups are the source
dataset's groups, or one per source image when it has none. Each group has one query: the
original of its first readable image (its first view when originals are left out), so every
query has at least its own views as positives, as in Copydays; the query stays in the
database and is removed from its own ranking by the manifest loader. A group of a single
image (``per_image=0``) gets no query.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from tqdm import tqdm

from retrieval.datasets.base import RetrievalDataset
from retrieval.images import load_image
from retrieval.storage import atomic_write

logger = logging.getLogger(__name__)

Op = Callable[[Image.Image, np.random.Generator], Image.Image]

CROP_AREA = (0.10, 0.80)  # fraction of the image area a crop keeps
JPEG_QUALITIES = (3, 5, 8, 10, 15, 20, 30, 50, 75)  # the Copydays JPEG attack levels
SAVE_QUALITY = 95  # originals and views are written as JPEG at this quality
CHAIN_LENGTHS = (1, 2, 3)
CHAIN_WEIGHTS = (0.35, 0.45, 0.20)
MIN_SIDE = 64  # scaling never shrinks the short side below this (nor smaller inputs)


def _to_pil(image: np.ndarray) -> Image.Image:
    """Wrap an (H, W), (H, W, 3) or (H, W, 4) uint8 array as an RGB PIL image."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {array.dtype}")
    if array.ndim == 2:
        return Image.fromarray(array, "L").convert("RGB")
    if array.ndim == 3 and array.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(array), "RGB")
    if array.ndim == 3 and array.shape[2] == 4:
        return Image.fromarray(np.ascontiguousarray(array), "RGBA").convert("RGB")
    raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {array.shape}")


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    area: tuple[float, float] = CROP_AREA,
) -> tuple[int, int, int, int]:
    """A random (left, top, right, bottom) box covering a fraction ``area`` of the image."""
    fraction = rng.uniform(*area)
    ratio = _log_uniform(rng, 3 / 4, 4 / 3)  # width / height of the crop
    target = fraction * width * height
    crop_w, crop_h = math.sqrt(target * ratio), math.sqrt(target / ratio)
    # Too wide or too tall for the image: keep the area, give up the aspect ratio.
    if crop_w > width:
        crop_w = width
    elif crop_h > height:
        crop_w = target / height
    crop_w = min(width, max(1, round(crop_w)))
    crop_h = min(height, max(1, round(target / crop_w)))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return left, top, left + crop_w, top + crop_h


def op_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep a random rectangle of 10-80 % of the area, aspect ratio 3:4 to 4:3 where it fits."""
    return image.crop(crop_box(image.width, image.height, rng))


def op_rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by a small angle (2-20 degrees either way); the corners are filled with black."""
    angle = float(rng.uniform(2.0, 20.0) * rng.choice([-1.0, 1.0]))
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)


def op_rotate90(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 90, 180 or 270 degrees."""
    turns = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
    return image.transpose(turns[int(rng.integers(0, 3))])


def op_scale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rescale uniformly by a factor between 0.3 and 1.5, the short side kept >= MIN_SIDE."""
    factor = _log_uniform(rng, 0.3, 1.5)
    short = min(image.size)
    factor = max(factor, min(1.0, MIN_SIDE / short))
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC)


def op_jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-compress as JPEG at one of the Copydays qualities (3 to 75)."""
    quality = int(rng.choice(JPEG_QUALITIES))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def op_color(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Change saturation (down to grey), contrast and brightness."""
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.0, 2.0)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.5, 1.6)))
    return ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.6, 1.5)))


def op_blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur with a radius of 0.5-3 px per 512 px of the long side."""
    radius = float(rng.uniform(0.5, 3.0)) * max(0.5, max(image.size) / 512)
    return image.filter(ImageFilter.GaussianBlur(radius))


def op_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Add gaussian noise with a standard deviation of 3-25 grey levels."""
    array = np.asarray(image, dtype=np.float32)
    noisy = array + rng.normal(0.0, rng.uniform(3.0, 25.0), array.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def _perspective_coefficients(
    output: list[tuple[float, float]], source: list[tuple[float, float]]
) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping each output corner to its source corner."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(output, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    solution = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs))
    return tuple(float(c) for c in solution)


def op_perspective(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Warp a random quadrilateral inside the image (corners moved in by <= 20 %) to its frame."""
    width, height = image.size
    corners = [(0.0, 0.0), (width, 0.0), (width, height), (0.0, height)]
    inward = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    source = [
        (x + sx * rng.uniform(0, 0.2) * width, y + sy * rng.uniform(0, 0.2) * height)
        for (x, y), (sx, sy) in zip(corners, inward, strict=True)
    ]
    coefficients = _perspective_coefficients(corners, source)
    return image.transform(
        image.size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC
    )


def op_occlusion(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Cover a random rectangle of 5-25 % of the area with a flat colour or with noise."""
    left, top, right, bottom = crop_box(image.width, image.height, rng, area=(0.05, 0.25))
    out = image.copy()
    if rng.random() < 0.5:
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        ImageDraw.Draw(out).rectangle((left, top, right - 1, bottom - 1), fill=colour)
    else:
        patch = rng.integers(0, 256, (bottom - top, right - left, 3), dtype=np.uint8)
        out.paste(Image.fromarray(patch, "RGB"), (left, top))
    return out


# Chains apply their ops in this order: geometry, then photometry, then compression last.
OPS: dict[str, Op] = {
    "crop": op_crop,
    "perspective": op_perspective,
    "rotate": op_rotate,
    "rotate90": op_rotate90,
    "scale": op_scale,
    "color": op_color,
    "blur": op_blur,
    "noise": op_noise,
    "occlusion": op_occlusion,
    "jpeg": op_jpeg,
}


def augment_view(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """One random view of ``image`` (1-3 distinct ops) as (H, W, 3) uint8, and the op names."""
    names = list(OPS)
    count = int(rng.choice(CHAIN_LENGTHS, p=CHAIN_WEIGHTS))
    picked = sorted(rng.choice(len(names), size=count, replace=False).tolist())
    view = _to_pil(image)
    applied = []
    for index in picked:
        view = OPS[names[index]](view, rng)
        applied.append(names[index])
    return np.array(view.convert("RGB"), dtype=np.uint8), applied


_OUTPUT_NAME = re.compile(r"\d{5,}_.*_(orig|v\d{2,})\.jpg")


def _safe_stem(text: str, limit: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit] or "image"


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    """Write ``image`` as JPEG through a temporary file, so a crash leaves no half file."""
    with atomic_write(path) as stream:
        Image.fromarray(image, "RGB").save(stream, format="JPEG", quality=SAVE_QUALITY)


def expand_dataset(
    dataset: RetrievalDataset,
    per_image: int,
    out_dir: Path,
    seed: int = 0,
    include_originals: bool = True,
) -> Path:
    """Write each database image and ``per_image`` views as JPEG; returns ``manifest.csv``.

    Unreadable sources are skipped, logged and listed in ``out_dir/skipped.txt``.
    """
    if per_image < 0:
        raise ValueError(f"per_image must be >= 0, got {per_image}")
    if per_image == 0 and not include_originals:
        raise ValueError("nothing to write: per_image is 0 and include_originals is False")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    skipped_file = out_dir / "skipped.txt"
    # An interrupted run must not leave an old manifest pointing at half-replaced images.
    manifest.unlink(missing_ok=True)
    skipped_file.unlink(missing_ok=True)

    rows: list[tuple[str, str, int]] = []
    skipped: list[str] = []
    groups_with_query: set[str] = set()
    sources = list(enumerate(zip(dataset.image_paths, dataset.image_ids, strict=True)))
    for index, (path, image_id) in tqdm(sources, desc="expand", unit="image", disable=None):
        # One generator per source image, so a skipped image does not shift the others' views.
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        try:
            image = load_image(path)
            views = [augment_view(image, rng)[0] for _ in range(per_image)]
        except (ValueError, OSError) as error:  # ImageLoadError is a ValueError
            logger.warning("skipping %s: %s", path, error)
            skipped.append(f"{path}\t{error}")
            continue
        group = str(dataset.groups[index] if dataset.groups is not None else index)
        stem = f"{index:05d}_{_safe_stem(image_id)}"
        outputs = [("orig", image)] if include_originals else []
        outputs += [(f"v{k:02d}", view) for k, view in enumerate(views)]
        for suffix, array in outputs:
            relative = f"images/{stem}_{suffix}.jpg"
            _save_jpeg(array, out_dir / relative)
            is_query = int(group not in groups_with_query)
            groups_with_query.add(group)
            rows.append((relative, group, is_query))

    # Files of an earlier run into the same folder that this run did not rewrite; never the
    # sources, which are themselves an earlier run's output when an expansion is expanded.
    keep = {Path(path).name for path, _, _ in rows}
    keep |= {p.name for p in dataset.image_paths if Path(p).parent.resolve() == image_dir.resolve()}
    for stale in image_dir.glob("*.jpg"):
        if stale.name not in keep and _OUTPUT_NAME.fullmatch(stale.name):
            stale.unlink()
    # A group of one image (possible with per_image=0) has no positives, so no query.
    sizes = Counter(group for _, group, _ in rows)
    rows = [(path, group, flag if sizes[group] > 1 else 0) for path, group, flag in rows]
    if skipped:
        skipped_file.write_text("\n".join(skipped) + "\n", encoding="utf-8")
        logger.warning(
            "%d of %d source images skipped; see %s", len(skipped), len(sources), skipped_file
        )
    with atomic_write(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "group", "is_query"))
        writer.writerows(rows)
    return manifest


def expand_cli(spec: str, per_image: int, out: Path, seed: int) -> Path:
    """Load the dataset named by ``spec`` and expand it into ``out``; returns the manifest."""
    from retrieval.datasets import load_dataset  # here: the package imports its modules

    return expand_dataset(load_dataset(spec), per_image, Path(out), seed=seed)
