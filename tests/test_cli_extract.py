"""The extract CLI on a folder of awkward files: good ones extracted, bad ones listed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from retrieval.cli import main


def _awkward_folder(root: Path) -> dict[str, bool]:
    """Write the files; returns name -> whether it should be extracted."""
    photo = Image.fromarray(skdata.chelsea())
    photo.convert("CMYK").save(root / "cmyk.jpg", quality=90)
    gray16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(root / "deep16.png")
    exif = photo.getexif()
    exif[0x0112] = 8
    photo.save(root / "rotated.jpg", exif=exif, quality=90)
    Image.fromarray(skdata.coffee()).save(root / "nested_ok.webp")
    (root / "empty.jpg").write_bytes(b"")
    good = (root / "rotated.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(good[:200] + b"\x00" * 50)
    (root / "notes.txt").write_text("not an image, and not an image extension")
    return {
        "cmyk.jpg": True,
        "deep16.png": True,
        "rotated.jpg": True,
        "nested_ok.webp": True,
        "empty.jpg": False,
        "corrupt.jpg": False,
    }


@pytest.mark.slow
def test_extract_cli_skips_and_lists_bad_files(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    expected = _awkward_folder(folder)
    out = tmp_path / "features.npz"
    code = main(
        ["extract", "--images", str(folder), "--backbone", "efficientnet_lite0", "--out", str(out)]
    )
    assert code == 0
    saved = np.load(out)
    extracted = sorted(Path(p).name for p in saved["paths"])
    assert extracted == sorted(name for name, ok in expected.items() if ok)
    assert saved["features"].shape == (4, 1280)
    assert np.all(np.isfinite(saved["features"]))
    skipped = " ".join(saved["skipped"].tolist())
    assert "empty.jpg" in skipped and "corrupt.jpg" in skipped
    printed = capsys.readouterr().out
    assert "skipped 2 unreadable file(s)" in printed and "empty file" in printed

    # A second run reads every vector from the cache and gives the same features.
    again = ["extract", "--images", f"{folder}/*.jpg", "--out", str(tmp_path / "b.npz")]
    assert main([*again, "--backbone", "efficientnet_lite0"]) == 0
    assert "0 computed" in capsys.readouterr().out


def test_extract_cli_reports_missing_input(tmp_path) -> None:
    with pytest.raises(SystemExit, match="no files match"):
        main(["extract", "--images", str(tmp_path / "nothing*.jpg"), "--out", "x.npz"])
