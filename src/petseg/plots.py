"""Matplotlib figures written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from petseg.fileio import atomic_file  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(
    history: list[dict], keys: dict[str, str], title: str, ylabel: str, path: Path, saved_epoch: int | None = None
) -> None:
    """One line per ``keys`` entry (column -> label) against epoch, through the epochs that have it (validation
    scores: only the validated ones); ``saved_epoch`` (the weights kept) is marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for column, label in keys.items():
        rows = [row for row in history if column in row]
        ax.plot([row["epoch"] for row in rows], [row[column] for row in rows], marker="o", markersize=3, label=label)
    if saved_epoch is not None:
        ax.axvline(saved_epoch, color="0.4", linestyle="--", linewidth=1, label=f"saved model (epoch {saved_epoch})")
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_model_comparison(metrics: dict[str, dict[str, float]], labels: dict[str, str], path: Path) -> None:
    """Horizontal grouped bars: one group per metric (``labels``: key -> readable name), one bar per model, the
    value printed past the bar's end (or its error bar, from a ``<key>_ci95`` entry) so that labels never collide."""
    keys, models = list(labels), list(metrics)
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.32 * len(keys) * len(models)))
    height = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        values = [metrics[model].get(key, 0.0) for key in keys]
        errors = [[0.0] * len(keys), [0.0] * len(keys)]
        for k, key in enumerate(keys):
            if interval := metrics[model].get(f"{key}_ci95"):
                errors[0][k], errors[1][k] = values[k] - interval[0], interval[1] - values[k]
        positions = [k + i * height for k in range(len(keys))]
        ax.barh(positions, values, height, xerr=errors, capsize=2, label=model)
        for y, value, upper in zip(positions, values, errors[1], strict=True):
            ax.text(value + upper + 0.01, y, f"{value:.3f}", va="center", fontsize=7)
    ax.set_yticks([k + height * (len(models) - 1) / 2 for k in range(len(keys))], [labels[k] for k in keys])
    ax.invert_yaxis()  # the headline Dice on top
    ax.set(xlim=(0, 1.12), xlabel="score (error bar: 95 % bootstrap interval)", title="Test set: models compared")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the axes: no bar or label under it
    save_figure(fig, path)


def plot_dice_histogram(dice_by_model: dict[str, list[float]], path: Path) -> None:
    """Where each model fails: the distribution of per-image test Dice, the models' bars side by side."""
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = [i / 20 for i in range(21)]
    ax.hist(list(dice_by_model.values()), bins=bins, label=list(dice_by_model), rwidth=0.9)
    ax.set(xlabel="per-image Dice", ylabel="test images", title="Test Dice per image (how many images, how badly)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left")
    save_figure(fig, path)


def plot_overlay_grid(rows: list[dict], path: Path, title: str) -> None:
    """One row per case: photo, ground truth and prediction overlays; ``rows`` carry the arrays and a label."""
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False, layout="constrained")
    for ax_row, row in zip(axes, rows, strict=True):
        for ax, key, label in zip(
            ax_row,
            ("photo", "truth", "prediction"),
            ("photo", "ground truth", f"prediction (Dice {row['dice']:.3f})"),
            strict=True,
        ):
            ax.imshow(row[key])
            ax.set_title(f"{row['name']}\n{label}" if key == "photo" else label, fontsize=8)
            ax.axis("off")
    fig.suptitle(title)
    save_figure(fig, path)
