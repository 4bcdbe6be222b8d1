"""The official list files (trainval.txt, test.txt) and the seeded train/valid split."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from petseg.config import PrepareConfig
from petseg.data.layout import unsafe_name_reason
from petseg.errors import PetsegError

SPECIES = {1: "cat", 2: "dog"}


@dataclass(frozen=True)
class ListEntry:
    name: str
    class_id: int
    species: str
    breed: str
    where: str = ""  # "<list file>:<line>", for messages


def _lines(path: Path) -> list[str]:
    """The file's lines as text; a byte that is not UTF-8 is one error naming the line."""
    lines = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            bad = raw[err.start : err.start + 1].hex()
            raise PetsegError(f"{path}:{lineno}: not UTF-8 text (byte 0x{bad} at column {err.start + 1})") from None
    return lines


def parse_list_file(path: Path) -> list[ListEntry]:
    """Parse an official list file: ``Name CLASS-ID SPECIES BREED-ID`` per line, ``#`` comments."""
    if not path.is_file():
        raise PetsegError(f"{path}: list file missing from the annotations archive")
    entries: list[ListEntry] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(_lines(path), start=1):
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
        if reason := unsafe_name_reason(name):
            raise PetsegError(f"{path}:{lineno}: refused sample name {name!r} ({reason}); a name is a plain file stem")
        if name in first_line:
            raise PetsegError(f"{path}:{lineno}: {name} is listed twice (first on line {first_line[name]})")
        first_line[name] = lineno
        entries.append(ListEntry(name, class_id, species, name.rsplit("_", 1)[0], f"{path.name}:{lineno}"))
    return entries


def split_trainval(entries: list[ListEntry], valid_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded 9:1 (by default) split; depends on names only, so a skipped sample shifts nothing."""
    ordered = sorted(entries, key=lambda e: e.name)
    random.Random(seed).shuffle(ordered)
    n_valid = max(1, round(len(ordered) * valid_fraction)) if len(ordered) > 1 else 0
    return sorted(ordered[n_valid:], key=lambda e: e.name), sorted(ordered[:n_valid], key=lambda e: e.name)


def build_splits(annotations_dir: Path, cfg: PrepareConfig) -> dict[str, list[ListEntry]]:
    trainval = parse_list_file(annotations_dir / "trainval.txt")
    test = parse_list_file(annotations_dir / "test.txt")
    train, valid = split_trainval(trainval, cfg.valid_fraction, cfg.seed)
    splits = {"train": train, "valid": valid, "test": sorted(test, key=lambda e: e.name)}
    in_trainval = {entry.name: entry for entry in trainval}
    for entry in test:
        if entry.name in in_trainval:
            raise PetsegError(
                f"{annotations_dir}: {entry.name} is listed in both {in_trainval[entry.name].where} and {entry.where}; "
                "a test photo must not be trained on"
            )
    return splits
