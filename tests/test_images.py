"""Safe image loading: every format to upright 8-bit RGB, and one clear error for bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.images import (
    ImageLoadError,
    crop_to_box,
    load_for_model,
    load_image,
    open_image,
    resize_for_model,
)


@pytest.fixture
def photo() -> np.ndarray:
    """A 120x160 RGB image with a distinct colour in each quadrant (orientation is visible)."""
    image = np.zeros((120, 160, 3), np.uint8)
    image[:60, :80] = (255, 0, 0)
    image[:60, 80:] = (0, 255, 0)
    image[60:, :80] = (0, 0, 255)
    image[60:, 80:] = (255, 255, 0)
    return image


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".bmp", ".tif", ".gif"])
def test_common_formats_load_as_rgb(tmp_path: Path, photo: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(photo).save(path)
    loaded = load_image(path)
    assert loaded.shape == (120, 160, 3) and loaded.dtype == np.uint8
    # Lossy formats may shift colours a little; the top-left quadrant stays red.
    assert loaded[10, 10, 0] > 200 and loaded[10, 10, 1] < 60


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert tuple(load_image(tmp_path / "anim.gif")[5, 5]) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path: Path, photo: np.ndarray) -> None:
    image = Image.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.shape == (160, 120, 3)
    # After a clockwise turn the blue bottom-left quadrant is at the top-left.
    assert loaded[10, 10, 2] > 200 and loaded[10, 10, 0] < 60


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    loaded = load_image(tmp_path / "cmyk.jpg")
    assert loaded.shape == (120, 160, 3)
    assert loaded[10, 10, 0] > 200 and loaded[10, 10, 2] < 60


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.zeros((8, 8), np.uint16)
    values[:, 4:] = 32768  # half of the 16-bit range
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    loaded = load_image(tmp_path / "deep.png")
    assert tuple(loaded[0, 0]) == (0, 0, 0)
    assert tuple(loaded[0, 7]) == (128, 128, 128)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 2:, 3] = 255  # left half transparent red, right half opaque red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    loaded = load_image(tmp_path / "alpha.png")
    assert tuple(loaded[0, 0]) == (255, 255, 255)
    assert tuple(loaded[0, 3]) == (255, 0, 0)


def test_grayscale_and_palette(tmp_path: Path, photo: np.ndarray) -> None:
    Image.fromarray(photo).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(photo).convert("P").save(tmp_path / "palette.png")
    gray = load_image(tmp_path / "gray.png")
    assert gray.shape == (120, 160, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    assert load_image(tmp_path / "palette.png")[10, 10, 0] > 200


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_jpeg(tmp_path: Path, photo: np.ndarray) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d, p: d / "missing.jpg", "no such file"),
        (lambda d, p: _written(d / "empty.jpg", b""), "empty file"),
        (lambda d, p: _written(d / "text.jpg", b"not a photo"), "not an image"),
        (_truncated_jpeg, "truncated"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path: Path, photo: np.ndarray, make, reason) -> None:
    path = make(tmp_path, photo)
    with pytest.raises(ImageLoadError, match=reason) as caught:
        load_image(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_pixel_limit_refuses_huge_images(tmp_path: Path) -> None:
    Image.new("L", (400, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(tmp_path / "big.png", max_pixels=100_000)
    assert load_image(tmp_path / "big.png", max_pixels=120_000).shape == (300, 400, 3)


def test_bytes_and_upload_names(photo: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "PNG")
    assert load_image(buffer.getvalue()).shape == (120, 160, 3)
    with pytest.raises(ImageLoadError, match=r"upload\.png"):
        load_image(b"garbage", name="upload.png")


def test_center_crop_and_resize_modes(photo: np.ndarray) -> None:
    image = Image.fromarray(photo)
    cropped = resize_for_model(image, 64, "center-crop")
    squashed = resize_for_model(image, 64, "resize")
    assert cropped.shape == squashed.shape == (64, 64, 3)
    # The crop keeps the centre (120/160 of the width): columns near the edges differ.
    assert not np.array_equal(cropped, squashed)
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_for_model(image, 64, "stretch")


def test_jpeg_draft_decoding_matches_full_decoding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((80, 80, 1))).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "large.jpg", quality=95)  # 1280x960
    fast = load_for_model(tmp_path / "large.jpg", 224)
    full = resize_for_model(open_image(tmp_path / "large.jpg"), 224)
    assert fast.shape == (224, 224, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3.0


def test_crop_to_box_clamps_and_rejects_empty(photo: np.ndarray) -> None:
    image = Image.fromarray(photo)
    assert crop_to_box(image, (-5, -5, 80.4, 60.2)).size == (81, 61)
    with pytest.raises(ValueError, match="empty crop box"):
        crop_to_box(image, (100, 100, 90, 110))
