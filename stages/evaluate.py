"""DVC stage `evaluate`: both best checkpoints scored on the official test split."""

from __future__ import annotations

import sys
from pathlib import Path

from petseg.config import MODEL_NAMES, load_params, to_flat_dict
from petseg.errors import exits_cleanly
from petseg.evaluation import HEADLINE, breed_table, model_metrics, per_image_dice, score_split
from petseg.fileio import ensure_writable, write_json, write_text
from petseg.inference import Predictor
from petseg.plots import plot_dice_histogram, plot_model_comparison
from petseg.runtime import resolve_device
from petseg.tracking import Tracker, dvc_experiment_name, run_tags

PREPARED_DIR = Path("data/prepared")
OUT_DIR = Path("reports/evaluate")


@exits_cleanly
def main() -> None:
    params = load_params()
    cfg = params.evaluate
    ensure_writable(OUT_DIR)
    device = resolve_device("auto")
    predictors = {name: Predictor(Path("models") / f"{name}.pt", device) for name in MODEL_NAMES}
    counts, metrics, rows = {}, {}, []
    for name, predictor in predictors.items():
        counts[name], rows = score_split(
            predictor, PREPARED_DIR, "test", cfg.threshold, cfg.batch_size, desc=f"evaluate {name}"
        )
        metrics[name] = model_metrics(counts[name], rows)
        print(f"evaluate: {name}: " + ", ".join(f"{k} {metrics[name][k]:.4f}" for k in HEADLINE))
    write_json(OUT_DIR / "metrics.json", metrics)
    write_text(OUT_DIR / "per_breed.csv", breed_table(counts, rows).to_csv(index=False))
    plot_model_comparison(metrics, list(HEADLINE), OUT_DIR / "comparison.png")
    plot_dice_histogram({name: per_image_dice(c) for name, c in counts.items()}, OUT_DIR / "dice_hist.png")

    for name in MODEL_NAMES:
        tags = run_tags("evaluate", name)
        with Tracker(params.tracking.experiment, f"{dvc_experiment_name()}-{name}-evaluate", tags) as tracker:
            if training_run := tracker.latest_run_id(f"train_{name}", name):
                tracker.set_tags({"training_run_id": training_run})
            tracker.log_params(to_flat_dict(cfg, "evaluate."))
            tracker.log_metrics({f"test_{k}": v for k, v in metrics[name].items() if k in HEADLINE})
            tracker.log_artifacts(
                [
                    OUT_DIR / "metrics.json",
                    OUT_DIR / "per_breed.csv",
                    OUT_DIR / "comparison.png",
                    OUT_DIR / "dice_hist.png",
                ]
            )


if __name__ == "__main__":
    sys.exit(main())
