"""Safe image loading (any common format to 8-bit RGB) and resizing to a backbone's input.

Every failure to read a file raises :class:`ImageLoadError` naming the file, so callers can
skip one bad image and go on.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# 64 megapixels: far above any photo collection we target, far below a decompression bomb.
DEFAULT_MAX_PIXELS = 64_000_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

# "center-crop": resize the short side to S, then crop the central SxS square.
# "resize": resize the whole image to SxS (aspect ratio not kept, nothing cut off).
RESIZE_MODES = ("center-crop", "resize")

ImageSource = str | Path | bytes | BinaryIO

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image


class ImageLoadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


def _describe(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, str | Path):
        return str(source)
    return "<uploaded bytes>" if isinstance(source, bytes) else "<stream>"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha composited on white, 16-bit and float rescaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.int64)
        # 16-bit data arrives as mode "I" too; a maximum above 255 means a 16-bit range.
        if mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array >> 8 if array.max(initial=0) <= 65535 else array >> 24
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV, RGBX ...: PIL's own conversion is correct for these.
    return image.convert("RGB")


def open_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode ``source`` to an upright 8-bit RGB PIL image, or raise :class:`ImageLoadError`.

    ``draft_size`` lets JPEG decoding downscale by a power of two while staying at least that
    large on both sides, which makes decoding large photos several times faster.
    """
    label = _describe(source, name)
    try:
        if isinstance(source, str | Path):
            path = Path(source)
            if not path.is_file():
                raise ImageLoadError(label, "no such file")
            if path.stat().st_size == 0:
                raise ImageLoadError(label, "empty file (0 bytes)")
            stream: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed below
        elif isinstance(source, bytes):
            if not source:
                raise ImageLoadError(label, "empty file (0 bytes)")
            stream = io.BytesIO(source)
        else:
            stream = source
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    label, f"{width}x{height} pixels exceeds the limit of {max_pixels} pixels"
                )
            image.seek(0)  # GIF, multi-page TIFF: the first frame
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(label, f"decompression bomb refused ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
        reason = str(error) or type(error).__name__
        if "truncated" in reason.lower():
            reason = f"truncated file ({reason})"
        raise ImageLoadError(label, reason) from None
    finally:
        if isinstance(source, str | Path) and "stream" in locals():
            stream.close()


def load_image(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> np.ndarray:
    """Load ``source`` as an (H, W, 3) uint8 RGB array, EXIF orientation applied."""
    return np.asarray(open_image(source, max_pixels=max_pixels, name=name))


def crop_to_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """Crop to an (x1, y1, x2, y2) box in pixels, clamped to the image; used for query boxes."""
    x1, y1, x2, y2 = (float(v) for v in box)
    width, height = image.size
    left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    right, bottom = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
    if right <= left or bottom <= top:
        raise ValueError(f"empty crop box {tuple(box)} for an image of {width}x{height}")
    return image.crop((left, top, right, bottom))


def resize_for_model(image: Image.Image, size: int, mode: str = "center-crop") -> np.ndarray:
    """Resize an RGB image to a (size, size, 3) uint8 array by ``mode`` (see RESIZE_MODES)."""
    if mode == "resize":
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))
    if mode != "center-crop":
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def load_for_model(
    source: ImageSource,
    size: int,
    mode: str = "center-crop",
    *,
    box: Sequence[float] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Load, optionally crop to ``box``, and resize to a backbone's (size, size, 3) uint8 input."""
    # JPEG draft decoding only when no box: a box is given in full-resolution pixels.
    draft = None if box is not None else size
    image = open_image(source, max_pixels=max_pixels, draft_size=draft, name=name)
    if box is not None:
        image = crop_to_box(image, box)
    return resize_for_model(image, size, mode)


def is_image_file(path: Path) -> bool:
    """Whether the path's extension is one of the recognised image formats."""
    return path.suffix.lower() in IMAGE_EXTENSIONS
