"""DVC stage `infer`: test-set masks at original size (PNG 0/255) and best/worst overlay grids per model."""

from __future__ import annotations

import sys

from petseg.config import MODEL_NAMES, load_params
from petseg.data.dataset import PreparedSplit
from petseg.errors import exits_cleanly
from petseg.evaluation.predictor import Predictor, best_and_worst, write_split_masks
from petseg.fileio import atomic_dir, ensure_writable
from petseg.pipeline import PREPARED_DIR, REPORTS_DIR, checkpoint_path, stage_tracker
from petseg.plots import plot_overlay_grid
from petseg.runtime import resolve_device
from petseg.schema import to_flat_dict

OUT_DIR = REPORTS_DIR / "infer"


@exits_cleanly
def main() -> None:
    params = load_params()
    cfg, threshold, batch_size = params.infer, params.evaluate.threshold, params.evaluate.batch_size
    test = PreparedSplit(PREPARED_DIR, "test").require_samples("infer")
    ensure_writable(OUT_DIR)
    count = min(cfg.limit or len(test), len(test))
    device = resolve_device("auto")
    for name in MODEL_NAMES:
        predictor = Predictor(checkpoint_path(name), device)
        with atomic_dir(OUT_DIR / name / "masks") as masks_dir:
            dice = write_split_masks(predictor, test, count, batch_size, threshold, masks_dir)
        grid_path = OUT_DIR / name / "overlays.png"
        grid = best_and_worst(predictor, test, dice, cfg.grid_rows, threshold)
        plot_overlay_grid(grid, grid_path, f"{name}: best (top) and worst (bottom) test cases by Dice")
        print(f"infer: {name}: {count} masks in {OUT_DIR / name / 'masks'}, grid {grid_path}")
        with stage_tracker(params, "infer", name) as tracker:
            tracker.log_params(to_flat_dict(cfg, "infer.") | {"evaluate.threshold": threshold})
            tracker.log_artifacts([grid_path])


if __name__ == "__main__":
    sys.exit(main())
