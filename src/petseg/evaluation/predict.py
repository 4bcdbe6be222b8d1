"""`petseg predict`: masks for anyone's photos, at each photo's original size."""

from __future__ import annotations

import errno
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from petseg.data.photos import Photo, load_preview, load_rgb
from petseg.errors import PetsegError, first_line
from petseg.evaluation.masks import PRED_COLOR, mask_at_size, overlay
from petseg.fileio import atomic_file, ensure_writable
from petseg.progress import progress
from petseg.serving import Backend


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
        if too_long := [name for name in outputs if len(os.fsencode(name)) > NAME_MAX]:
            problems.append(f"{path}: its output name {too_long[-1][:40]}... is over {NAME_MAX} bytes; rename it")
            continue
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


NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems


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


def usable_out(out_dir: Path) -> Path:
    """``--out`` checked before any work: a symlink loop or a file in the way is one line, not a traceback."""
    try:
        out_dir.resolve(strict=False)
    except (OSError, RuntimeError) as err:
        raise PetsegError(f"--out {out_dir}: not a usable folder ({first_line(err)})") from None
    if out_dir.exists() and not out_dir.is_dir():
        raise PetsegError(f"--out {out_dir}: exists and is not a folder")
    return out_dir


IO_THREADS = 2  # decode the next batch and write the last one while the model runs
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _decoded_batches(pool: ThreadPoolExecutor, files: list[Path], size: int, batch_size: int) -> Iterator[list]:
    """Batches of (path, future Photo), the next batch's decoding already submitted: at most two batches of decoded
    photos exist at a time."""
    chunks = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    pending = [pool.submit(load_rgb, path, size) for path in chunks[0]] if chunks else []
    for index, chunk in enumerate(chunks):
        current = pending
        pending = [pool.submit(load_rgb, path, size) for path in chunks[index + 1]] if index + 1 < len(chunks) else []
        yield list(zip(chunk, current, strict=True))


def _write_outputs(path: Path, photo: Photo, prob, out_dir: Path, threshold: float, overlays: bool) -> str:
    """One photo's mask (and overlay); '' or why it could not be written (a full disk stops the whole run)."""
    try:
        save_png(out_dir / f"{path.stem}.png", mask_at_size(prob, photo.width, photo.height, threshold))
        if overlays:  # drawn on a preview of at most 2048 px: a 12000 px photo's overlay would take gigabytes
            preview = load_preview(path)
            where = mask_at_size(prob, *preview.size, threshold) > 0
            save_png(out_dir / f"{path.stem}_overlay.png", overlay(np.asarray(preview), where, PRED_COLOR))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        return f"{path}: its outputs could not be written to {out_dir} ({err.strerror or first_line(err)})"
    return ""


def predict_paths(
    predictor: Backend,
    paths: list[Path],
    out_dir: Path,
    threshold: float | None = None,
    batch_size: int = 8,
    overlays: bool = False,
) -> PredictSummary:
    """Masks (and overlays) for every readable input; each input that fails is its own error line, the rest go on.
    Decoding and writing run in threads beside the model; outputs are the same bytes as one after the other."""
    threshold = predictor.threshold if threshold is None else threshold
    files, problems = collect_inputs(paths, overlays)
    refuse_out_beside_inputs(files, usable_out(out_dir))
    ensure_writable(out_dir)
    summary = PredictSummary(failed=len(problems))
    for problem in problems:
        _report(problem)
    bar = progress(total=len(files), desc="predict", unit=" img")
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="petseg-io") as pool:
        writes: deque[Future] = deque()
        for batch in _decoded_batches(pool, files, predictor.image_size, batch_size):
            readable = []
            for path, decoded in batch:
                try:
                    readable.append((path, decoded.result()))
                except UNREADABLE as err:
                    _report(f"{path}: not a readable image ({first_line(err)})")
                    summary.failed += 1
            if readable:
                probs = predictor.probabilities(np.stack([photo.resized for _, photo in readable]))
                for (path, photo), prob in zip(readable, probs, strict=True):
                    writes.append(pool.submit(_write_outputs, path, photo, prob, out_dir, threshold, overlays))
            while len(writes) > batch_size or (writes and writes[0].done()):  # bounded: one batch in flight
                _finish(writes.popleft(), summary)
            bar.update(len(batch))
        while writes:
            _finish(writes.popleft(), summary)
    bar.close()
    return summary


def _finish(write: Future, summary: PredictSummary) -> None:
    if problem := write.result():
        _report(problem)
        summary.failed += 1
    else:
        summary.written += 1
