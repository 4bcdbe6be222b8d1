"""Every image mode petseg decodes gives, at every size, exactly what its 8-bit RGB twin gives: the same pixels for
the model (so the same mask) and the same overlay size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from petseg.data.photos import load_rgb, to_rgb8

SIZE = 64
# (mode, file format): what Pillow writes for each mode; sizes below, at and far above 4x the model size.
MODES = [
    ("L", "PNG"),
    ("LA", "PNG"),
    ("I;16", "PNG"),
    ("I", "TIFF"),
    ("F", "TIFF"),
    ("P", "PNG"),
    ("PA", "TIFF"),
    ("1", "PNG"),
    ("RGBA", "PNG"),
    ("CMYK", "TIFF"),
    ("CMYK", "JPEG"),
    ("L", "JPEG"),
]
SIZES = [(100, 80), (500, 400), (1300, 1000)]


def photo_in_mode(mode: str, width: int, height: int) -> Image.Image:
    """A smooth colour photo with a bright 'pet', converted to ``mode`` as a user's file would hold it."""
    y, x = np.mgrid[0:height, 0:width]
    pet = ((x - width / 2) ** 2 / (width / 3) ** 2 + (y - height / 2) ** 2 / (height / 3) ** 2) < 1
    rgb = np.stack([x * 200 // width, y * 200 // height, np.full_like(x, 60)], axis=-1)
    rgb[pet] = (230, 190, 90)
    img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if mode == "I;16":
        return Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)  # a 16-bit grey
    if mode == "I":
        return img.convert("L").convert("I")
    if mode == "F":
        return Image.fromarray(np.asarray(img.convert("L")).astype(np.float32) / 255, "F")
    if mode == "P":
        return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    if mode == "PA":
        return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).convert("PA")
    return img.convert(mode)


@pytest.mark.parametrize("width,height", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("mode,fmt", MODES, ids=[f"{m}-{f}" for m, f in MODES])
def test_every_mode_at_every_size_matches_its_rgb_twin(tmp_path, mode, fmt, width, height):
    path = tmp_path / f"photo.{fmt.lower()}"
    photo_in_mode(mode, width, height).save(path, format=fmt)
    with Image.open(path) as stored:
        assert stored.mode == mode or (fmt == "JPEG" and mode == "CMYK") or mode.startswith("I;16")
        twin = to_rgb8(stored.convert("RGB") if fmt == "JPEG" else stored)  # the same pixels as 8-bit RGB
        twin.save(tmp_path / "twin.png")
    ours, theirs = load_rgb(path, SIZE), load_rgb(tmp_path / "twin.png", SIZE)
    assert (ours.width, ours.height) == (theirs.width, theirs.height) == (width, height)
    if fmt == "JPEG":  # a JPEG decodes reduced (draft): within a few grey levels of its full-size twin
        assert np.abs(ours.resized.astype(int) - theirs.resized.astype(int)).mean() < 3
    else:
        assert np.array_equal(ours.resized, theirs.resized)
    assert ours.resized.mean() > 20  # never a blacked-out photo
