"""DVC stage `infer`: test-set masks at original size (PNG 0/255) and best/worst overlay grids per model."""

from __future__ import annotations

import sys
import time

from petseg.config import MODEL_NAMES, MODEL_TITLES, load_params
from petseg.data.dataset import PreparedSplit
from petseg.errors import exits_cleanly
from petseg.evaluation.predictor import Predictor, best_and_worst, write_split_masks
from petseg.evaluation.scoring import read_per_image_dice
from petseg.fileio import atomic_dir, ensure_writable
from petseg.pipeline import PREPARED_DIR, REPORTS_DIR, checkpoint_path, stage_tracker
from petseg.plots import plot_overlay_grid
from petseg.runtime import resolve_device
from petseg.schema import to_flat_dict

OUT_DIR = REPORTS_DIR / "infer"
PER_IMAGE = REPORTS_DIR / "evaluate" / "per_image.csv"  # the grids show the best and worst of the whole split


@exits_cleanly
def main() -> None:
    params = load_params()
    cfg, batch_size = params.infer, params.resources.eval_batch_size
    test = PreparedSplit(PREPARED_DIR, "test").require_samples("infer")
    ensure_writable(OUT_DIR)
    names = [row["name"] for row in test.rows]
    dice = {name: read_per_image_dice(PER_IMAGE, name, names) for name in MODEL_NAMES}
    count = min(cfg.limit or len(test), len(test))
    device = resolve_device("auto")
    for name in MODEL_NAMES:
        started = time.time()
        predictor = Predictor(checkpoint_path(name), device)  # served as evaluate scored it
        with atomic_dir(OUT_DIR / name / "masks") as masks_dir:
            write_split_masks(predictor, test, count, batch_size, masks_dir)
        grid_path = OUT_DIR / name / "overlays.png"
        grid = best_and_worst(predictor, test, dice[name], cfg.grid_rows)
        title = f"{MODEL_TITLES[name]}: best (top) and worst (bottom) of {len(test)} test photos by Dice"
        plot_overlay_grid(grid, grid_path, title)
        worst = grid[-1]
        print(
            f"infer: {name}: {count} masks in {OUT_DIR / name / 'masks'}, grid {grid_path} (worst case: "
            f"{worst['name']}, Dice {worst['dice']:.3f})"
        )
        with stage_tracker(params, "infer", name, started=started) as tracker:
            tracker.log_params(to_flat_dict(cfg, "infer.") | {"tta": predictor.tta, "threshold": predictor.threshold})
            tracker.log_artifacts([grid_path])


if __name__ == "__main__":
    sys.exit(main())
