"""Photos and trimaps in, resized uint8 arrays out: decoding by content and the one resize everything shares."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from petseg.data.layout import IGNORE

BOUNDARY_VALUE = {"pet": 1, "background": 0, "ignore": IGNORE}
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BOUNDARY = 1, 2, 3
_TRIMAP_VALUES = (TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BOUNDARY)
EXIF_ORIENTATION = 0x0112


class SampleError(Exception):
    """Why one sample cannot be used; it is skipped and reported, never fatal."""


def resize_photo(photo: Image.Image, size: int) -> np.ndarray:
    """An RGB photo -> uint8 size x size x 3, bilinear with antialiasing (Pillow's). The cache and every way out
    resize through this, so the model sees photos made the same way, and serving needs no PyTorch."""
    return np.asarray(photo.resize((size, size), Image.Resampling.BILINEAR))


MAX_PIXELS = 150_000_000  # ~12000 x 12000: a larger photo is refused (decoding it could exhaust memory)
PREVIEW_SIDE = 2048  # overlays are drawn at most this long on the long side


def open_photo(path: Path, max_pixels: int = 0) -> Image.Image:
    """Open any image by content; refuse one over ``max_pixels`` (0: :data:`MAX_PIXELS`) before decoding a pixel."""
    limit = max_pixels or MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below says it in one line
        img = Image.open(path)
    if img.width * img.height > limit:
        img.close()
        raise ValueError(f"{img.width}x{img.height} is over the {limit / 1_000_000:g} Mpx limit")
    return img


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any Pillow mode as an 8-bit RGB photo: 16- and 32-bit integer greys are scaled (not clipped) to 8 bits,
    float greys in [0, 1] or [0, 255] are scaled, alpha is dropped; anything else raises ValueError with why."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        grey = np.asarray(img).astype(np.uint32) * 255 // 65535
    elif img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = float(values.max(initial=0.0))
        if not np.isfinite(values).all() or values.min(initial=0.0) < 0 or top > 65535:
            raise ValueError(f"{img.mode} pixels outside 0..65535")
        scale = 255.0 if img.mode == "F" and top <= 1.0 else (1.0 if top <= 255 else 255.0 / 65535.0)
        grey = np.rint(values * scale)
    elif img.mode in ("PA", "P", "LA", "La", "RGBA", "RGBa", "RGBX"):
        return img.convert("RGBA").convert("RGB")
    else:
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV; Pillow raises ValueError for what it cannot
    return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")


def decode_near(img: Image.Image, size: int) -> Image.Image:
    """Decode as little as needed for a ``size`` output: a JPEG at the smallest 1/2^k scale still >= ``size``
    (much less work and memory); another format as 8-bit RGB first (``reduce`` refuses I;16, P and 1 and averages
    palette indices of PA), then reduced by a whole factor when it is >= 4x larger, exactly as its RGB twin is."""
    if img.format == "JPEG":
        img.draft("RGB", (size, size))
        return to_rgb8(img)
    rgb = to_rgb8(img)
    factor = min(rgb.width, rgb.height) // (2 * size)
    return rgb.reduce(factor) if factor >= 2 else rgb


def load_sample(
    image_path: Path, trimap_path: Path, size: int, boundary: str
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Decode one photo (by content, any format) and its trimap; resize both to ``size``.

    No EXIF rotation here: trimaps are drawn on the stored pixel order.
    Returns (image uint8 HxWx3, mask uint8 HxW, original width, original height).
    """
    if not image_path.is_file():
        raise SampleError("image file missing")
    if not trimap_path.is_file():
        raise SampleError("trimap missing")
    try:
        with open_photo(image_path) as img:
            width, height = img.size
            image = resize_photo(decode_near(img, size), size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise SampleError(f"image cannot be decoded ({err})") from None
    try:
        with Image.open(trimap_path) as tri:
            if tri.size != (width, height):
                raise SampleError(f"trimap size {tri.size[0]}x{tri.size[1]} differs from image {width}x{height}")
            if tri.mode not in ("L", "P"):
                raise SampleError(f"trimap is {tri.mode}, expected a single 8-bit channel")
            histogram = tri.histogram()  # in C: far cheaper than counting values in NumPy
            small = tri.resize((size, size), Image.Resampling.NEAREST)
    except (OSError, SyntaxError, ValueError) as err:
        raise SampleError(f"trimap cannot be decoded ({err})") from None
    unexpected = [value for value, count in enumerate(histogram) if count and value not in _TRIMAP_VALUES]
    if unexpected:
        raise SampleError(f"trimap has values {unexpected} outside {{1, 2, 3}}")
    lut = np.zeros(256, dtype=np.uint8)
    lut[TRIMAP_PET], lut[TRIMAP_BACKGROUND], lut[TRIMAP_BOUNDARY] = 1, 0, BOUNDARY_VALUE[boundary]
    return image, lut[np.asarray(small)], width, height


@dataclass(frozen=True)
class Photo:
    resized: np.ndarray  # uint8 size x size x 3, what the model sees
    width: int  # the photo's size as a viewer shows it (EXIF orientation applied)
    height: int


def load_rgb(path: Path, size: int, max_pixels: int = 0) -> Photo:
    """Decode any image by content with EXIF orientation applied, never holding more than a reduced copy of a large
    JPEG in memory (``petseg predict``); ``max_pixels`` as :func:`open_photo`."""
    with open_photo(path, max_pixels) as img:
        width, height = img.size
        if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees: sides swap
            width, height = height, width
        upright = ImageOps.exif_transpose(decode_near(img, size))
    return Photo(resize_photo(upright, size), width, height)


def load_preview(path: Path) -> Image.Image:
    """The photo upright as RGB at its own size, at most :data:`PREVIEW_SIDE` long (overlays): decoded apart from
    the model's input, so a mask never depends on whether an overlay was asked for."""
    with open_photo(path) as img:
        preview = ImageOps.exif_transpose(decode_near(img, PREVIEW_SIDE))
    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return preview
