"""`petseg predict`: masks for anyone's photos, at each photo's original size."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from petseg.data.photos import load_rgb
from petseg.evaluation.predictor import PRED_COLOR, Predictor, mask_at_size, overlay
from petseg.fileio import atomic_file, ensure_writable
from petseg.progress import progress


@dataclass
class PredictSummary:
    written: int = 0
    failed: int = 0


def collect_inputs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files named directly or found (non-recursively) in directories; problems as messages.

    A file named twice (directly and through its directory, say) is predicted once. Masks are named by file stem,
    so of several files sharing a stem only the first is kept; each other one is a problem, never a silent overwrite.
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
    named: dict[str, Path] = {}  # mask name (stem) -> the file it belongs to
    for path in found:
        first = named.setdefault(path.stem, path)
        if first is path:
            files.append(path)
        elif first.resolve() != path.resolve():
            problems.append(f"{path}: its mask would overwrite {first}'s ({path.stem}.png); use another --out for it")
    return files, problems


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
    ensure_writable(out_dir)
    files, problems = collect_inputs(paths)
    summary = PredictSummary(failed=len(problems))
    for problem in problems:
        _report(problem)
    batch: list[tuple[Path, np.ndarray, Image.Image]] = []

    def flush() -> None:
        probs = predictor.probabilities(np.stack([item[1] for item in batch]))
        for (path, _, original), prob in zip(batch, probs, strict=True):
            mask = mask_at_size(prob, original.width, original.height, threshold)
            save_png(out_dir / f"{path.stem}.png", mask)
            if overlays:
                save_png(out_dir / f"{path.stem}_overlay.png", overlay(np.asarray(original), mask > 0, PRED_COLOR))
            summary.written += 1
        batch.clear()

    for path in progress(files, desc="predict", unit=" img"):
        try:
            resized, original = load_rgb(path, predictor.image_size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            _report(f"{path}: not a readable image ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
            summary.failed += 1
            continue
        batch.append((path, resized, original))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return summary
