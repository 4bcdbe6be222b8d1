"""DVC stage `evaluate`: both best checkpoints scored on the official test split."""

from __future__ import annotations

import sys

from petseg.config import MODEL_NAMES, load_params
from petseg.data.dataset import PreparedSplit
from petseg.errors import exits_cleanly
from petseg.evaluation.predictor import Predictor
from petseg.evaluation.scoring import HEADLINE, breed_table, model_metrics, per_image_dice, score_split
from petseg.fileio import ensure_writable, write_json, write_text
from petseg.pipeline import PREPARED_DIR, REPORTS_DIR, checkpoint_path, stage_tracker
from petseg.plots import plot_dice_histogram, plot_model_comparison
from petseg.runtime import resolve_device
from petseg.schema import to_flat_dict

OUT_DIR = REPORTS_DIR / "evaluate"
OUTPUTS = [OUT_DIR / name for name in ("metrics.json", "per_breed.csv", "comparison.png", "dice_hist.png")]


@exits_cleanly
def main() -> None:
    params = load_params()
    cfg = params.evaluate
    PreparedSplit(PREPARED_DIR, "test").require_samples("evaluate")
    ensure_writable(OUT_DIR)
    device = resolve_device("auto")
    predictors = {name: Predictor(checkpoint_path(name), device) for name in MODEL_NAMES}
    counts, metrics, rows = {}, {}, []
    for name, predictor in predictors.items():
        counts[name], rows = score_split(
            predictor, PREPARED_DIR, "test", cfg.threshold, cfg.batch_size, desc=f"evaluate {name}"
        )
        metrics[name] = model_metrics(counts[name], rows)
        print(f"evaluate: {name}: " + ", ".join(f"{k} {metrics[name][k]:.4f}" for k in HEADLINE))
    metrics_path, breeds_path, comparison_path, hist_path = OUTPUTS
    write_json(metrics_path, metrics)
    write_text(breeds_path, breed_table(counts, rows).to_csv(index=False))
    plot_model_comparison(metrics, list(HEADLINE), comparison_path)
    plot_dice_histogram({name: per_image_dice(c) for name, c in counts.items()}, hist_path)

    for name in MODEL_NAMES:
        with stage_tracker(params, "evaluate", name) as tracker:
            if training_run := tracker.latest_run_id(f"train_{name}", name):
                tracker.set_tags({"training_run_id": training_run})
            tracker.log_params(to_flat_dict(cfg, "evaluate."))
            tracker.log_metrics({f"test_{k}": v for k, v in metrics[name].items() if k in HEADLINE})
            tracker.log_artifacts(OUTPUTS)


if __name__ == "__main__":
    sys.exit(main())
