"""The prepared-data format: what the cache holds and how to read its lists (depends on nothing but errors).

Layout of ``data/prepared``::

    {split}.csv           index, name, species, breed, class_id, width, height (original size)
    {split}_images.npy    uint8 (N, S, S, 3)
    {split}_masks.npy     uint8 (N, S, S): 0 background, 1 pet, IGNORE
    meta.json             image size, boundary rule, counts, hash of the split lists
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from petseg.errors import PetsegError

SPLITS = ("train", "valid", "test")
IGNORE = 255  # mask value excluded from loss and metrics
CSV_FIELDS = ("index", "name", "species", "breed", "class_id", "width", "height")


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` is not a plain file stem (it could leave the directory it is joined to), or None."""
    if not name or name in (".", ".."):
        return "empty or a dot name"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if ".." in name:
        return "contains '..'"
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        return "a drive path"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character"
    return None


def sample_file(directory: Path, name: str, suffix: str) -> Path:
    """``directory/<name><suffix>``; a name that could leave ``directory`` is refused."""
    reason = unsafe_name_reason(name)
    if reason:
        raise PetsegError(f"refused sample name {name!r} ({reason}): a sample name must be a plain file stem")
    return directory / f"{name}{suffix}"


def images_path(prepared_dir: Path, split: str) -> Path:
    return prepared_dir / f"{split}_images.npy"


def masks_path(prepared_dir: Path, split: str) -> Path:
    return prepared_dir / f"{split}_masks.npy"


def list_path(prepared_dir: Path, split: str) -> Path:
    return prepared_dir / f"{split}.csv"


def meta_path(prepared_dir: Path) -> Path:
    return prepared_dir / "meta.json"


def read_split_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_split_csv(path: Path, rows: list[tuple]) -> None:
    """``rows`` hold every field of :data:`CSV_FIELDS` but the index, in order."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        writer.writerows((index, *row) for index, row in enumerate(rows))


def read_meta(prepared_dir: Path) -> dict:
    path = meta_path(prepared_dir)
    if not path.is_file():
        raise PetsegError(f"{path}: missing; run the prepare stage first (dvc repro prepare)")
    return json.loads(path.read_text())
