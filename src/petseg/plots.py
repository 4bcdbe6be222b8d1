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


def plot_curves(history: list[dict], keys: dict[str, str], title: str, ylabel: str, path: Path) -> None:
    """One line per ``keys`` entry (column -> label) against epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    for column, label in keys.items():
        ax.plot(epochs, [row[column] for row in history], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_model_comparison(metrics: dict[str, dict[str, float]], keys: list[str], path: Path) -> None:
    """Grouped bars: one group per metric, one bar per model; a ``<key>_ci95`` entry draws an error bar."""
    fig, ax = plt.subplots(figsize=(8, 4))
    models = list(metrics)
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        values = [metrics[model].get(key, 0.0) for key in keys]
        errors = [[0.0] * len(keys), [0.0] * len(keys)]
        for k, key in enumerate(keys):
            if interval := metrics[model].get(f"{key}_ci95"):
                errors[0][k], errors[1][k] = values[k] - interval[0], interval[1] - values[k]
        positions = [k + i * width for k in range(len(keys))]
        bars = ax.bar(positions, values, width, yerr=errors, capsize=3, label=model)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([k + width * (len(models) - 1) / 2 for k in range(len(keys))], keys, rotation=20)
    ax.set(ylim=(0, 1.05), ylabel="score", title="Test set: models compared")
    ax.legend()
    save_figure(fig, path)


def plot_dice_histogram(dice_by_model: dict[str, list[float]], path: Path) -> None:
    """Where each model fails: the distribution of per-image test Dice."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = [i / 20 for i in range(21)]
    for model, values in dice_by_model.items():
        ax.hist(values, bins=bins, alpha=0.5, label=model)
    ax.set(xlabel="per-image Dice", ylabel="images", title="Test Dice per image", yscale="log")
    ax.legend()
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
