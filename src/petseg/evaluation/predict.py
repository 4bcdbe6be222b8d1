"""`petseg predict`: masks for anyone's photos, at each photo's original size."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from petseg.data.photos import Photo, load_rgb
from petseg.errors import PetsegError
from petseg.evaluation.predictor import PRED_COLOR, Predictor, mask_at_size, overlay
from petseg.fileio import atomic_file, ensure_writable
from petseg.progress import progress


@dataclass
class PredictSummary:
    written: int = 0
    failed: int = 0


def collect_inputs(paths: list[Path], overlays: bool = False) -> tuple[list[Path], list[str]]:
    """Files named directly or found (non-recursively) in directories; problems as messages.

    A file named twice (directly and through its directory, say) is predicted once. Outputs are named by file stem
    (``<stem>.png``, ``<stem>_overlay.png``), so a file whose output name another file already claimed is a
    problem, never a silent overwrite.
    """
    found, problems = [], []
    for path in paths:
        if path.is_dir():
            listed = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not listed:
                problems.append(f"{path}: empty directory, nothing to predict")
            found.extend(listed)
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"{path}: no such file or directory")
    files: list[Path] = []
    seen: set[Path] = set()
    claimed: dict[str, tuple[Path, str]] = {}  # output file name -> (the input it belongs to, what it is)
    for path in found:
        if path.resolve() in seen:
            continue  # the same file named twice
        seen.add(path.resolve())
        outputs = output_names(path, overlays)
        clash = next((name for name in outputs if name in claimed), None)
        if clash is None:
            claimed.update({name: (path, what) for name, what in outputs.items()})
            files.append(path)
        else:
            first, their = claimed[clash]
            mine = outputs[clash]
            whose = f"{first}'s" if their == mine else f"{first}'s {their}"
            problems.append(f"{path}: its {mine} would overwrite {whose} ({clash}); use another --out for it")
    return files, problems


def output_names(path: Path, overlays: bool) -> dict[str, str]:
    names = {f"{path.stem}.png": "mask"}
    if overlays:
        names[f"{path.stem}_overlay.png"] = "overlay"
    return names


def refuse_out_beside_inputs(files: list[Path], out_dir: Path) -> None:
    """Outputs never go into a folder that holds an input: a mask or overlay there could replace a photo."""
    out = out_dir.resolve()
    for path in files:
        if path.resolve().parent == out:
            raise PetsegError(
                f"--out {out_dir}: holds the input {path}; outputs there could replace your photos "
                "(choose another --out)"
            )


def save_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_file(path) as handle:
        Image.fromarray(pixels).save(handle, format="PNG")


def _report(message: str) -> None:
    print(f"petseg: error: {message}", file=sys.stderr)


def predict_paths(
    predictor: Predictor,
    paths: list[Path],
    out_dir: Path,
    threshold: float = 0.5,
    batch_size: int = 8,
    overlays: bool = False,
) -> PredictSummary:
    files, problems = collect_inputs(paths, overlays)
    refuse_out_beside_inputs(files, out_dir)
    ensure_writable(out_dir)
    summary = PredictSummary(failed=len(problems))
    for problem in problems:
        _report(problem)
    batch: list[tuple[Path, Photo]] = []

    def flush() -> None:
        probs = predictor.probabilities(np.stack([photo.resized for _, photo in batch]))
        for (path, photo), prob in zip(batch, probs, strict=True):
            save_png(out_dir / f"{path.stem}.png", mask_at_size(prob, photo.width, photo.height, threshold))
            if overlays:  # drawn on the bounded preview: a 12000 px photo's overlay would take gigabytes
                where = mask_at_size(prob, *photo.preview.size, threshold) > 0
                save_png(out_dir / f"{path.stem}_overlay.png", overlay(np.asarray(photo.preview), where, PRED_COLOR))
            summary.written += 1
        batch.clear()

    for path in progress(files, desc="predict", unit=" img"):
        try:
            photo = load_rgb(path, predictor.image_size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            _report(f"{path}: not a readable image ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
            summary.failed += 1
            continue
        batch.append((path, photo))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return summary
