"""DVC stage `evaluate`: both trained checkpoints scored on the official test split, registered and carded."""

from __future__ import annotations

import sys
import time

from petseg.config import MODEL_NAMES, load_params
from petseg.data.dataset import PreparedSplit
from petseg.deploy.release import log_evaluation, write_model_card
from petseg.errors import exits_cleanly
from petseg.evaluation import scoring
from petseg.evaluation.predictor import Predictor
from petseg.fileio import ensure_writable, write_json, write_text
from petseg.pipeline import PREPARED_DIR, REPORTS_DIR, checkpoint_path, stage_tracker
from petseg.plots import plot_dice_histogram, plot_model_comparison
from petseg.runtime import resolve_device

OUT_DIR = REPORTS_DIR / "evaluate"
NAMES = ("metrics.json", "details.json", "per_image.csv", "per_breed.csv", "comparison.png", "dice_hist.png")
METRICS, DETAILS, PER_IMAGE, BREEDS, COMPARISON, HISTOGRAM = OUTPUTS = [OUT_DIR / name for name in NAMES]


@exits_cleanly
def main() -> None:
    params = load_params()
    test = PreparedSplit(PREPARED_DIR, "test").require_samples("evaluate")
    for folder in (OUT_DIR, REPORTS_DIR / "cards"):
        ensure_writable(folder)
    device = resolve_device("auto")
    predictors = {name: Predictor(checkpoint_path(name), device) for name in MODEL_NAMES}  # as served
    details, counts, started, speed = {}, {}, {}, {}
    for name, predictor in predictors.items():
        started[name] = time.time()
        batch_size = params.resources.eval_batch_size
        details[name], result, rows = scoring.evaluate_model(predictor, PREPARED_DIR, params.evaluate, batch_size)
        speed[name], counts[name] = len(rows) / result.seconds, result.counts  # the served model's pass alone
        print(f"evaluate: {name}: " + ", ".join(f"{k} {details[name][k]:.4f}" for k in scoring.HEADLINE))
        if (warning := scoring.degenerate_warning(name, details[name])) is not None:
            print(f"evaluate: warning: {warning}")
    write_json(METRICS, {name: scoring.tracked_scores(scores) for name, scores in details.items()})
    write_json(DETAILS, details)
    write_text(PER_IMAGE, scoring.per_image_table(counts, rows).to_csv(index=False))
    write_text(BREEDS, scoring.breed_table(counts, rows).to_csv(index=False))
    plot_model_comparison(details, scoring.LABELS, COMPARISON)
    plot_dice_histogram({name: scoring.per_image_dice(c) for name, c in counts.items()}, HISTOGRAM)
    for name in MODEL_NAMES:
        card = write_model_card(name, details[name], speed[name], checkpoint_path(name), PREPARED_DIR, REPORTS_DIR)
        with stage_tracker(params, "evaluate", name, started=started[name]) as tracker:
            log_evaluation(tracker, params, name, details[name], checkpoint_path(name), PREPARED_DIR, test.images[0])
            tracker.log_artifacts([*OUTPUTS, card])


if __name__ == "__main__":
    sys.exit(main())
