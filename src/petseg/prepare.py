"""Turn the extracted Oxford-IIIT Pet tree into split lists and a resized uint8 array cache.

Layout written to ``out_dir``::

    {split}.csv           index, name, species, breed, class_id, width, height (original size)
    {split}_images.npy    uint8 (N, S, S, 3)
    {split}_masks.npy     uint8 (N, S, S): 0 background, 1 pet, 255 ignore
    meta.json             image size, boundary rule, counts, hash of the split lists
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import random
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from petseg.config import PrepareConfig
from petseg.errors import PetsegError
from petseg.fileio import atomic_dir, ensure_writable
from petseg.progress import progress

SPLITS = ("train", "valid", "test")
SPECIES = {1: "cat", 2: "dog"}
IGNORE = 255
BOUNDARY_VALUE = {"pet": 1, "background": 0, "ignore": IGNORE}
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BOUNDARY = 1, 2, 3
_TRIMAP_VALUES = (TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BOUNDARY)
CSV_FIELDS = ("index", "name", "species", "breed", "class_id", "width", "height")


@dataclass(frozen=True)
class ListEntry:
    name: str
    class_id: int
    species: str
    breed: str


class SampleError(Exception):
    """Why one sample cannot be used; it is skipped and reported, never fatal."""


def parse_list_file(path: Path) -> list[ListEntry]:
    """Parse an official list file: ``Name CLASS-ID SPECIES BREED-ID`` per line, ``#`` comments."""
    if not path.is_file():
        raise PetsegError(f"{path}: list file missing from the annotations archive")
    entries = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        try:
            if len(fields) != 4:
                raise ValueError
            name, class_id, species_id, _breed_id = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
            species = SPECIES[species_id]
        except (ValueError, KeyError):
            raise PetsegError(
                f"{path}:{lineno}: malformed line {line!r} (expected 'Name CLASS-ID SPECIES(1|2) BREED-ID')"
            ) from None
        entries.append(ListEntry(name, class_id, species, name.rsplit("_", 1)[0]))
    return entries


def split_trainval(entries: list[ListEntry], valid_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded 9:1 (by default) split; depends on names only, so a skipped sample shifts nothing."""
    ordered = sorted(entries, key=lambda e: e.name)
    random.Random(seed).shuffle(ordered)
    n_valid = max(1, round(len(ordered) * valid_fraction)) if len(ordered) > 1 else 0
    return sorted(ordered[n_valid:], key=lambda e: e.name), sorted(ordered[:n_valid], key=lambda e: e.name)


def resize_photo(photo: Image.Image, size: int) -> np.ndarray:
    """An RGB photo -> uint8 size x size x 3, bilinear with antialiasing (PIL's filter, within 1 grey level).

    torch's uint8 kernel is vectorised: ~4x faster than PIL's resize here, the biggest per-photo cost after decoding.
    The cache and inference both resize through this, so the model sees photos made the same way.
    """
    chw = torch.from_numpy(np.array(photo)).permute(2, 0, 1)  # a writable copy, as torch.from_numpy expects
    return TF.resize(chw, [size, size], antialias=True).permute(1, 2, 0).numpy()


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
        with Image.open(image_path) as img:
            width, height = img.size
            if img.format == "JPEG":
                # Decode at the smallest 1/2^k scale that is still >= the target size: much less work.
                img.draft("RGB", (size, size))
            rgb = img if img.mode == "RGB" else img.convert("RGB")  # converting RGB to RGB is a full copy
            image = resize_photo(rgb, size)
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


def _one_thread_per_worker() -> None:
    """The pool already uses every core; torch's own threads in each worker would only contend."""
    torch.set_num_threads(1)


@dataclass(frozen=True)
class RowFile:
    """A uint8 .npy created at full size, whose rows workers fill in place: no pixels travel between processes.

    Rows go in with ``pwrite``: writing through a memory map costs a page fault per 4 KiB, 3x slower here.
    """

    path: Path
    offset: int
    row_bytes: int

    @classmethod
    def create(cls, path: Path, rows: int, row_shape: tuple[int, ...]) -> RowFile:
        array = np.lib.format.open_memmap(path, "w+", np.uint8, (rows, *row_shape))
        array.flush()
        return cls(path, array.offset, int(np.prod(row_shape)))

    def write(self, row: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=np.uint8)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            written = os.pwrite(fd, data, self.offset + row * self.row_bytes)
        finally:
            os.close(fd)
        if written != self.row_bytes:
            raise OSError(errno.ENOSPC, f"short write ({written} of {self.row_bytes} bytes)", str(self.path))


@dataclass(frozen=True)
class _Job:
    row: int
    image_path: Path
    trimap_path: Path
    size: int
    boundary: str
    images: RowFile
    masks: RowFile


def _load_job(job: _Job) -> tuple[tuple[int, int, int, int] | None, str]:
    """Decode one sample into its row of the arrays; return (stats or None, why it was skipped)."""
    try:
        image, mask, width, height = load_sample(job.image_path, job.trimap_path, job.size, job.boundary)
    except SampleError as err:
        return None, str(err)
    job.images.write(job.row, image)
    job.masks.write(job.row, mask)
    return (width, height, int(np.count_nonzero(mask == 1)), int(np.count_nonzero(mask != IGNORE))), ""


def build_splits(annotations_dir: Path, cfg: PrepareConfig) -> dict[str, list[ListEntry]]:
    trainval = parse_list_file(annotations_dir / "trainval.txt")
    test = parse_list_file(annotations_dir / "test.txt")
    train, valid = split_trainval(trainval, cfg.valid_fraction, cfg.seed)
    splits = {"train": train, "valid": valid, "test": sorted(test, key=lambda e: e.name)}
    seen: dict[str, str] = {}
    for split, entries in splits.items():
        for entry in entries:
            if entry.name in seen:
                raise PetsegError(f"{annotations_dir}: {entry.name} is listed in both {seen[entry.name]} and {split}")
            seen[entry.name] = split
    return splits


def prepare_dataset(images_dir: Path, annotations_dir: Path, out_dir: Path, cfg: PrepareConfig) -> dict:
    """Decode, validate and cache every listed sample; return the report dictionary."""
    splits = build_splits(annotations_dir, cfg)
    size = cfg.image_size
    listed = sum(len(entries) for entries in splits.values())
    ensure_writable(out_dir.parent, need_bytes=listed * size * size * 4)  # 3 image bytes + 1 mask byte per pixel
    workers = cfg.workers or os.cpu_count() or 1
    skipped: list[dict] = []
    report: dict = {
        "image_size": size,
        "boundary": cfg.boundary,
        "counts": {},
        "species": {},
        "foreground_fraction": {},
    }
    with atomic_dir(out_dir) as tmp, ProcessPoolExecutor(workers, initializer=_one_thread_per_worker) as pool:
        jobs, arrays = [], {}
        for split, entries in splits.items():
            images = RowFile.create(tmp / f"{split}_images.npy", len(entries), (size, size, 3))
            masks = RowFile.create(tmp / f"{split}_masks.npy", len(entries), (size, size))
            arrays[split] = (images, masks)
            jobs += [
                _Job(
                    i,
                    images_dir / f"{e.name}.jpg",
                    annotations_dir / "trimaps" / f"{e.name}.png",
                    size,
                    cfg.boundary,
                    images,
                    masks,
                )
                for i, e in enumerate(entries)
            ]
        # All splits in one pass, so no worker idles while the last jobs of a split finish.
        results = iter(progress(pool.map(_load_job, jobs, chunksize=4), total=len(jobs), desc="prepare", unit=" img"))
        for split, entries in splits.items():
            kept_rows: list[int] = []
            kept: list[tuple[ListEntry, int, int]] = []
            pet_pixels = labelled_pixels = 0
            for row, entry in enumerate(entries):
                stats, reason = next(results)
                if stats is None:
                    skipped.append({"name": entry.name, "split": split, "reason": reason})
                    continue
                width, height, pets, labelled = stats
                kept_rows.append(row)
                kept.append((entry, width, height))
                pet_pixels += pets
                labelled_pixels += labelled
            if len(kept_rows) < len(entries):
                for array in arrays[split]:
                    _keep_rows(array.path, kept_rows)
            _write_split_csv(tmp / f"{split}.csv", kept)
            report["counts"][split] = len(kept)
            report["species"][split] = dict(sorted(Counter(e.species for e, _, _ in kept).items()))
            report["foreground_fraction"][split] = round(pet_pixels / labelled_pixels, 6) if labelled_pixels else 0.0
        report["counts"]["total"] = sum(report["counts"][s] for s in SPLITS)
        report["skipped_count"] = len(skipped)
        report["skipped"] = skipped
        # Identifies this exact split (a reseeded split has the same counts but other members).
        split_lists = hashlib.sha256(b"".join((tmp / f"{split}.csv").read_bytes() for split in SPLITS)).hexdigest()
        meta = {"image_size": size, "boundary": cfg.boundary, "counts": report["counts"], "split_lists": split_lists}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return report


def _keep_rows(path: Path, rows: list[int]) -> None:
    """Rewrite an .npy keeping only ``rows`` (needed only when samples were skipped)."""
    full = np.load(path, mmap_mode="r")
    out_path = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(out_path, "w+", full.dtype, (len(rows), *full.shape[1:]))
    for position, row in enumerate(rows):
        out[position] = full[row]
    out.flush()
    del out, full
    os.replace(out_path, path)


def _write_split_csv(path: Path, kept: list[tuple[ListEntry, int, int]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for index, (entry, width, height) in enumerate(kept):
            writer.writerow([index, entry.name, entry.species, entry.breed, entry.class_id, width, height])


def read_split_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
