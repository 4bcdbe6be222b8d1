"""DVC stage `evaluate`: both best checkpoints scored on the official test split."""

from __future__ import annotations

import sys
import time

from petseg.config import MODEL_NAMES, load_params
from petseg.data.dataset import PreparedSplit
from petseg.errors import exits_cleanly
from petseg.evaluation.predictor import Predictor
from petseg.evaluation.scoring import HEADLINE, breed_table, degenerate_warning, evaluate_model, per_image_dice
from petseg.fileio import ensure_writable, write_json, write_text
from petseg.pipeline import PREPARED_DIR, REPORTS_DIR, checkpoint_path, log_evaluation, write_model_card
from petseg.plots import plot_dice_histogram, plot_model_comparison
from petseg.runtime import resolve_device

OUT_DIR = REPORTS_DIR / "evaluate"
CARDS_DIR = REPORTS_DIR / "cards"
OUTPUTS = [OUT_DIR / name for name in ("metrics.json", "per_breed.csv", "comparison.png", "dice_hist.png")]


@exits_cleanly
def main() -> None:
    params = load_params()
    cfg = params.evaluate
    test = PreparedSplit(PREPARED_DIR, "test").require_samples("evaluate")
    ensure_writable(OUT_DIR)
    device = resolve_device("auto")
    predictors = {name: Predictor(checkpoint_path(name), device) for name in MODEL_NAMES}
    counts, metrics, rows = {}, {}, []
    speed = {}
    for name, predictor in predictors.items():
        started = time.perf_counter()
        metrics[name], result, rows = evaluate_model(predictor, PREPARED_DIR, cfg)
        speed[name] = len(rows) / (time.perf_counter() - started)
        counts[name] = result.counts
        print(f"evaluate: {name}: " + ", ".join(f"{k} {metrics[name][k]:.4f}" for k in HEADLINE))
        if (warning := degenerate_warning(name, metrics[name])) is not None:
            print(f"evaluate: warning: {warning}")
    metrics_path, breeds_path, comparison_path, hist_path = OUTPUTS
    write_json(metrics_path, metrics)
    write_text(breeds_path, breed_table(counts, rows).to_csv(index=False))
    plot_model_comparison(metrics, list(HEADLINE), comparison_path)
    plot_dice_histogram({name: per_image_dice(c) for name, c in counts.items()}, hist_path)

    for name in MODEL_NAMES:
        card = write_model_card(name, metrics[name], speed[name], CARDS_DIR / f"{name}.md")
        log_evaluation(params, name, metrics[name], [*OUTPUTS, card], test.images[0])


if __name__ == "__main__":
    sys.exit(main())
