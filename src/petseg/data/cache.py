"""Build the prepared cache (see :mod:`petseg.data.layout`) from the extracted Oxford-IIIT Pet tree."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from petseg.config import PrepareConfig
from petseg.data.layout import (
    IGNORE,
    SPLITS,
    images_path,
    list_path,
    masks_path,
    meta_path,
    sample_file,
    write_split_csv,
)
from petseg.data.lists import ListEntry, build_splits
from petseg.data.photos import SampleError, load_sample
from petseg.errors import PetsegError
from petseg.fileio import atomic_dir, die_with_parent, ensure_writable
from petseg.progress import progress


def _worker_init() -> None:
    """Workers die with the stage (kill -9 included) and run torch on one thread: the pool already uses every core."""
    die_with_parent()
    torch.set_num_threads(1)


@contextmanager
def _decode_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool that drops its queued photos when the stage stops early (an error, Ctrl-C, SIGTERM), so the exit waits
    only for the photos already decoding; the executor's own exit would decode every queued one first."""
    pool = ProcessPoolExecutor(workers, initializer=_worker_init)
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


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


def decode_workers(requested: int) -> int:
    """Decode processes for ``resources.workers``: ``requested``, or (0) one per core."""
    return requested or os.cpu_count() or 1


def prepare_dataset(
    images_dir: Path, annotations_dir: Path, out_dir: Path, cfg: PrepareConfig, workers: int = 0
) -> dict:
    """Decode, validate and cache every listed sample; return the report dictionary."""
    splits = build_splits(annotations_dir, cfg)
    size = cfg.image_size
    listed = sum(len(entries) for entries in splits.values())
    ensure_writable(out_dir.parent, need_bytes=listed * size * size * 4)  # 3 image bytes + 1 mask byte per pixel
    workers = decode_workers(workers)
    skipped: list[dict] = []
    report: dict = {
        "image_size": size,
        "boundary": cfg.boundary,
        "counts": {},
        "species": {},
        "foreground_fraction": {},
    }
    with atomic_dir(out_dir) as tmp, _decode_pool(workers) as pool:
        jobs, arrays = [], {}
        for split, entries in splits.items():
            images = RowFile.create(images_path(tmp, split), len(entries), (size, size, 3))
            masks = RowFile.create(masks_path(tmp, split), len(entries), (size, size))
            arrays[split] = (images, masks)
            jobs += [
                _Job(
                    i,
                    sample_file(images_dir, e.name, ".jpg"),
                    sample_file(annotations_dir / "trimaps", e.name, ".png"),
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
            kept, fraction = _finish_split(tmp, split, entries, results, arrays[split], skipped)
            report["counts"][split] = len(kept)
            report["species"][split] = dict(sorted(Counter(e.species for e, _, _ in kept).items()))
            report["foreground_fraction"][split] = fraction
        empty = [split for split in ("train", "test") if not report["counts"][split]]
        if empty:  # raised inside atomic_dir: the previous cache stays as it was
            reasons = Counter(item["reason"] for item in skipped).most_common(1)
            why = f"; most common reason: {reasons[0][0]}" if reasons else ""
            raise PetsegError(
                f"prepare: no usable {' or '.join(empty)} sample ({len(skipped)} skipped{why}); "
                f"{out_dir} is left as it was"
            )
        report["counts"]["total"] = sum(report["counts"][s] for s in SPLITS)
        report["skipped_count"] = len(skipped)
        report["skipped"] = skipped
        # Identifies this exact split (a reseeded split has the same counts but other members).
        split_lists = hashlib.sha256(b"".join(list_path(tmp, split).read_bytes() for split in SPLITS)).hexdigest()
        meta = {"image_size": size, "boundary": cfg.boundary, "counts": report["counts"], "split_lists": split_lists}
        meta_path(tmp).write_text(json.dumps(meta, indent=2))
    return report


def _finish_split(
    tmp: Path, split: str, entries: list[ListEntry], results, row_files: tuple[RowFile, RowFile], skipped: list[dict]
) -> tuple[list[tuple[ListEntry, int, int]], float]:
    """Consume one split's results: list skips, compact the arrays, write its CSV; (kept, foreground fraction)."""
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
        for array in row_files:
            _keep_rows(array.path, kept_rows)
    write_split_csv(list_path(tmp, split), [(e.name, e.species, e.breed, e.class_id, w, h) for e, w, h in kept])
    return kept, round(pet_pixels / labelled_pixels, 6) if labelled_pixels else 0.0


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
