"""What people look at: titled curves with the saved epoch, comparison labels that never collide, readable
histograms, and prediction outlines that stand out on orange fur."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from petseg import plots
from petseg.evaluation.masks import PRED_COLOR, outline, overlay
from petseg.evaluation.scoring import LABELS
from petseg.training.reports import write_training_reports
from petseg.training.state import TrainState


@pytest.fixture
def figures(monkeypatch):
    """The figures the code under test would save, by file name, still open."""
    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.__setitem__(path.name, fig))
    yield drawn
    for fig in drawn.values():
        plots.plt.close(fig)


def test_training_curves_name_the_model_and_mark_the_saved_epoch(figures, tmp_path):
    row = {"train_loss": 0.5, "val_loss": 0.6, "val_dice": 0.7, "val_iou": 0.6, "lr": 1e-3}
    history = [row | {"epoch": e, "epoch_seconds": 1.0, "images_per_second": 9.0} for e in (1, 2, 3)]
    state = TrainState(epoch=3, history=history, best_epoch=2)
    write_training_reports(state, "res34", tmp_path)
    for name, title in (("loss.png", "ResNet34-UNet: loss (BCE + Dice)"), ("dice.png", "ResNet34-UNet: validation")):
        ax = figures[name].axes[0]
        assert ax.get_title().startswith(title)
        saved = [line for line in ax.get_lines() if line.get_label() == "saved model (epoch 2)"]
        assert len(saved) == 1 and list(saved[0].get_xdata()) == [2, 2]


def test_comparison_labels_are_readable_and_never_overlap(figures, tmp_path):
    # Two models with equal scores put every pair of value labels at the same height in a vertical bar chart.
    scores = {key: 0.9 for key in LABELS} | {"dice_per_image_ci95": [0.88, 0.92]}
    plots.plot_model_comparison({"unet": scores, "res34": dict(scores)}, LABELS, tmp_path / "comparison.png")
    fig = figures["comparison.png"]
    ax = fig.axes[0]
    assert [tick.get_text() for tick in ax.get_yticklabels()] == list(LABELS.values())
    fig.canvas.draw()
    boxes = [text.get_window_extent() for text in ax.texts]
    assert len(boxes) == 2 * len(LABELS)
    legend = ax.get_legend().get_window_extent()
    assert not [box for box in boxes + [bar.get_window_extent() for bar in ax.patches] if box.overlaps(legend)]
    assert not [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def test_dice_histogram_is_linear_with_the_models_side_by_side(figures, tmp_path):
    plots.plot_dice_histogram({"unet": [0.1, 0.9, 0.95], "res34": [0.92, 0.97, 0.99]}, tmp_path / "hist.png")
    ax = figures["hist.png"].axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "test images"
    bars = ax.patches
    assert len(bars) == 2 * 20 and {round(bar.get_height()) for bar in bars} == {0, 1, 2}
    lefts = sorted(bar.get_x() for bar in bars if bar.get_height() > 0)
    assert len(set(lefts)) == len(lefts)  # no bar hides behind another


def test_outline_is_the_band_inside_the_edge():
    square = np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    assert outline(square, 1).sum() == 10 * 10 - 8 * 8
    assert outline(square, 2).sum() == 10 * 10 - 6 * 6
    assert not outline(square, 1)[6:14, 6:14].any()


def test_prediction_overlay_outline_stands_out_on_orange_fur():
    fur = np.full((64, 64, 3), (215, 120, 40), np.uint8)  # a ginger cat
    where = np.zeros((64, 64), bool)
    where[16:48, 16:48] = True
    drawn = overlay(fur, where, PRED_COLOR)
    edge = outline(where, 1)
    assert (drawn[edge] == PRED_COLOR).all()
    rim = outline(where, 2) & ~edge
    assert (drawn[rim] == 20).all()  # a dark rim between the outline and the tinted fur
    assert (drawn[~where] == fur[~where]).all()
    contrast = np.abs(drawn[edge].astype(int) - fur[edge].astype(int)).sum(axis=1)
    assert contrast.min() > 300  # summed RGB difference: blue on orange
