"""Metrics JSON, history CSV and curve plots that DVC tracks."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from petseg.config import MODEL_TITLES
from petseg.fileio import write_json, write_text
from petseg.plots import plot_curves
from petseg.runtime import describe_machine, machine
from petseg.training.state import HISTORY_FIELDS, VALIDATION_FIELDS, TrainState


def write_csv(path: Path, rows: list[dict], fields: tuple[str, ...] | list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_training_reports(state: TrainState, model: str, out_dir: Path) -> list[Path]:
    best = next(row for row in state.history if row["epoch"] == state.best_epoch)
    metrics = {
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_by": state.stopped_by or "epochs",
        **{k: round(best[k], 6) for k in ("train_loss", "val_loss", "val_dice", "val_iou")},
    }
    timing = {  # varies run to run: apart, so that metrics.json is bit-identical for equal params
        "total_seconds": round(state.elapsed_seconds, 2),
        "images_per_second": round(sum(r["images_per_second"] for r in state.history) / len(state.history), 3),
        "machine": describe_machine(machine()),  # a speed holds for the machine it was measured on
    }
    names = ("metrics.json", "timing.json", "history.csv", "validation.csv", "loss.png", "dice.png")
    paths = {name: out_dir / name for name in names}
    write_json(paths["metrics.json"], metrics)
    write_json(paths["timing.json"], timing)
    write_csv(paths["history.csv"], state.history, HISTORY_FIELDS)
    write_csv(paths["validation.csv"], [row for row in state.history if "val_dice" in row], VALIDATION_FIELDS)
    title = f"{MODEL_TITLES[model]}: "
    losses = {"train_loss": "train", "val_loss": "valid"}
    plot_curves(state.history, losses, title + "loss (BCE + Dice)", "loss", paths["loss.png"], state.best_epoch)
    overlap = {"val_dice": "valid Dice", "val_iou": "valid IoU"}
    plot_curves(state.history, overlap, title + "validation overlap", "score", paths["dice.png"], state.best_epoch)
    return list(paths.values())


def time_spent(elapsed_s: float, budget_s: float) -> str:
    """Minutes spent of a budget, "1.2/3.9 min": the budget to two decimals (a test's tiny budget still shows)."""
    return f"{elapsed_s / 60:.1f}/{round(budget_s / 60, 2) or budget_s / 60:g} min"


def epoch_line(row: dict[str, float], epochs: int, state: TrainState, budget_s: float, select_by: str) -> str:
    """One epoch's progress line (validation scores only after a validation pass; the time spent of a budget; *best
    where a validation score chooses the saved epoch: with ``select_by: last`` every validated epoch would be best)."""
    scores = "".join(f"{key} {row[key]:.4f} " for key in ("val_loss", "val_dice", "val_iou") if key in row)
    of = f"/{epochs}" if epochs else ""  # 0: until the time budget
    budget = f" ({time_spent(state.elapsed_seconds, budget_s)})" if budget_s else ""
    strength = row.get("augment_strength", 1.0)
    augment = f"augment x{strength:.2f} " if strength < 1 else ""
    return (
        f"epoch {row['epoch']}{of}{budget} train_loss {row['train_loss']:.4f} {scores}{augment}"
        f"lr {row['lr']:.2e} {row['epoch_seconds']:.1f}s {row['images_per_second']:.1f} img/s"
        + (" *best" if select_by != "last" and state.best_epoch == row["epoch"] else "")
    )
