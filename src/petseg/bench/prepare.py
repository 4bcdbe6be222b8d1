"""`petseg bench prepare`: the prepare path vs a naive one-process PIL loop making the same photos and masks."""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from petseg.bench import best_interleaved, extracted_archives, report_ratio
from petseg.config import Params
from petseg.data.cache import decode_workers, prepare_dataset
from petseg.data.lists import build_splits


def bench_prepare(source: Path, params: Params, rounds: int = 3) -> dict:
    """The prepare path (draft-mode decode, process pool) vs a naive PIL loop making the same photos and masks."""
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        images_dir, annotations_dir = extracted_archives(source, Path(tmp))
        cfg, workers = params.prepare, decode_workers(params.resources.workers)  # the report names the processes
        size = cfg.image_size
        names = [e.name for entries in build_splits(annotations_dir, cfg).values() for e in entries]

        def naive() -> int:
            """The same outputs made the obvious way: one process, open, convert, resize photo and trimap."""
            for name in names:
                Image.open(images_dir / f"{name}.jpg").convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                Image.open(annotations_dir / "trimaps" / f"{name}.png").resize((size, size), Image.Resampling.NEAREST)
            return len(names)

        def ours() -> int:
            report_ = prepare_dataset(images_dir, annotations_dir, Path(tmp) / "prepared", cfg, workers)
            return report_["counts"]["total"] + report_["skipped_count"]

        naive_rate, ours_rate = best_interleaved(naive, ours, rounds=rounds)
    return report_ratio(
        "prepare",
        ("petseg prepare (images + masks)", "prepare_img_s", ours_rate),
        ("naive PIL loop (photo + trimap)", "naive_img_s", naive_rate),
        " (target >= 2)",
        {"images": len(names), "size": size, "workers": workers, "rounds": rounds},
    )
