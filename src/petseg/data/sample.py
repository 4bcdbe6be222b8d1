"""The bundled sample: real Oxford-IIIT Pet photos and trimaps, downscaled and packed like the two official archives,
built from any copy of them (`petseg sample`). Deterministic: the same archives and Pillow give the same bytes."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

from petseg.data.download import ARCHIVES, file_digests
from petseg.data.extract import extract_archive
from petseg.data.layout import sample_file
from petseg.data.lists import parse_list_file
from petseg.data.photos import open_photo, to_rgb8
from petseg.errors import PetsegError
from petseg.fileio import atomic_file
from petseg.progress import progress

LISTS = ("trainval.txt", "test.txt")
ATTRIBUTION = """# Oxford-IIIT Pet sample

{count} photos and their trimaps from the Oxford-IIIT Pet dataset (O. M. Parkhi, A. Vedaldi, A. Zisserman,
C. V. Jawahar, "Cats and Dogs", CVPR 2012; https://www.robots.ox.ac.uk/~vgg/data/pets/), breeds {breeds},
downscaled to at most {side} px on the long side (photos as JPEG quality {quality}, trimaps as PNG) and packed like
the two official archives, with the official list files filtered to these photos.

Licence: Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0,
https://creativecommons.org/licenses/by-sa/4.0/), as the dataset's page gives it; the copyright of the images
remains with their original owners. This derived sample is shared under the same licence.

Rebuilt by `petseg sample --source <folder with the official images.tar.gz and annotations.tar.gz> --out sample`
(src/petseg/data/sample.py). sha256 of the archives: see SHA256SUMS.
"""


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pack(out: Path, files: dict[str, bytes]) -> None:
    """A .tar.gz whose bytes depend on ``files`` alone: sorted members, no times, owners or gzip name."""
    directories = sorted({name.rsplit("/", i)[0] for name in files for i in range(1, name.count("/") + 1)})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in directories:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(files[name]), 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    with atomic_file(out, "wb") as handle, gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as gz:
        gz.write(raw.getvalue())


def _chosen(listed: dict[str, list], per_breed: int) -> list[str]:
    """The names to keep: all listed ones, or the first ``per_breed`` (by name) of each breed in each list."""
    names: set[str] = set()
    for entries in listed.values():
        by_breed: dict[str, list[str]] = {}
        for entry in sorted(entries, key=lambda e: e.name):
            by_breed.setdefault(entry.breed, []).append(entry.name)
        names.update(n for group in by_breed.values() for n in (group[:per_breed] if per_breed else group))
    return sorted(names)


def build_sample(source: Path, out: Path, side: int = 256, quality: int = 85, per_breed: int = 0) -> dict:
    """The photos named in ``source``'s trainval and test lists (``per_breed`` of each breed per list; 0 = all), at
    most ``side`` px long, into ``out``."""
    for archive in ARCHIVES:
        if not (source / archive).is_file():
            raise PetsegError(f"--source: {source / archive} not found (a folder with {' and '.join(ARCHIVES)})")
    with tempfile.TemporaryDirectory(prefix="petseg-sample-") as tmp:
        trees = {a: extract_archive(source / a, Path(tmp) / a, file_digests(source / a)["sha256"]) for a in ARCHIVES}
        images, annotations = trees["images.tar.gz"] / "images", trees["annotations.tar.gz"] / "annotations"
        listed = {name: parse_list_file(annotations / name) for name in LISTS}
        names = _chosen(listed, per_breed)
        photos: dict[str, bytes] = {}
        annotation_files: dict[str, bytes] = {}
        for name in progress(names, desc="sample", unit=" photo"):
            try:
                with open_photo(sample_file(images, name, ".jpg")) as img:
                    photo = to_rgb8(img).copy()  # loaded before the file closes
                with Image.open(sample_file(annotations / "trimaps", name, ".png")) as tri:
                    trimap = tri.convert("L")
            except (OSError, SyntaxError, ValueError):
                continue  # left out, and out of the list files: prepare would skip it anyway
            photo.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=None)
            trimap = trimap.resize(photo.size, Image.Resampling.NEAREST)
            photos[f"images/{name}.jpg"] = _encoded(photo, "JPEG", quality=quality, optimize=True)
            annotation_files[f"annotations/trimaps/{name}.png"] = _encoded(trimap, "PNG", optimize=True)
        kept = {path.split("/")[-1].removesuffix(".jpg") for path in photos}
        for name in LISTS:
            lines = (annotations / name).read_text().splitlines(keepends=True)
            annotation_files[f"annotations/{name}"] = "".join(
                line for line in lines if line.startswith("#") or line.split()[:1] and line.split()[0] in kept
            ).encode()
        if (annotations / "README").is_file():
            annotation_files["annotations/README"] = (annotations / "README").read_bytes()
    out.mkdir(parents=True, exist_ok=True)
    _pack(out / "images.tar.gz", photos)
    _pack(out / "annotations.tar.gz", annotation_files)
    digests = {archive: hashlib.sha256((out / archive).read_bytes()).hexdigest() for archive in ARCHIVES}
    with atomic_file(out / "SHA256SUMS", "w") as handle:
        handle.write("".join(f"{digest}  {archive}\n" for archive, digest in digests.items()))
    names = sorted(kept)
    breeds = ", ".join(sorted({name.rsplit("_", 1)[0] for name in names}))
    with atomic_file(out / "README.md", "w") as handle:
        handle.write(ATTRIBUTION.format(count=len(names), breeds=breeds, side=side, quality=quality))
    return {"photos": len(names), "bytes": sum((out / a).stat().st_size for a in ARCHIVES), "sha256": digests}
