from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from petseg.evaluation.metrics import (
    bootstrap_ci,
    confusion_counts,
    degenerate_counts,
    outline_band,
    per_image_scores,
    summarize,
)
from petseg.training.losses import BCEDiceLoss


def t(rows):
    return torch.tensor(rows, dtype=torch.uint8)


def test_hand_computed_scores_with_an_ignored_pixel():
    pred = t([[1, 1, 0, 0]]).bool()
    target = t([[1, 0, 1, 255]])
    assert confusion_counts(pred, target, 255).tolist() == [[1, 1, 1, 0]]
    scores = {k: float(v) for k, v in per_image_scores(confusion_counts(pred, target, 255)).items()}
    assert scores == pytest.approx({"dice": 0.5, "iou": 1 / 3, "accuracy": 1 / 3, "precision": 0.5, "recall": 0.5})


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        ([0, 0, 0, 0], [0, 0, 0, 0], {"dice": 1.0, "iou": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0}),
        ([1, 1, 1, 1], [1, 1, 1, 1], {"dice": 1.0, "iou": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0}),
        ([1, 1, 1, 1], [0, 0, 0, 0], {"dice": 0.0, "iou": 0.0, "accuracy": 0.0, "precision": 0.0, "recall": 0.0}),
        ([0, 0, 0, 0], [1, 1, 1, 1], {"dice": 0.0, "iou": 0.0, "accuracy": 0.0, "precision": 0.0, "recall": 0.0}),
        (
            [1, 1, 0, 0],
            [255, 255, 255, 255],
            {"dice": 1.0, "iou": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0},
        ),
    ],
    ids=["both-empty", "both-full", "all-false-positive", "all-missed", "all-ignored"],
)
def test_empty_and_full_masks_follow_the_documented_rule(pred, target, expected):
    scores = per_image_scores(confusion_counts(t([pred]).bool(), t([target]), 255))
    assert {k: float(v) for k, v in scores.items()} == expected


def numpy_reference(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Independent implementation: loops over images, pools pixels for the dataset level."""
    dice, iou, pooled = [], [], np.zeros(3)
    for p, g in zip(pred, target, strict=True):
        keep = g != 255
        p, g = p[keep].astype(bool), g[keep] == 1
        tp, fp, fn = np.sum(p & g), np.sum(p & ~g), np.sum(~p & g)
        dice.append(1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
        iou.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
        pooled += (tp, fp, fn)
    tp, fp, fn = pooled
    return {
        "dice_per_image": np.mean(dice),
        "iou_per_image": np.mean(iou),
        "dice_dataset": 2 * tp / (2 * tp + fp + fn),
        "iou_dataset": tp / (tp + fp + fn),
    }


def test_agrees_with_an_independent_numpy_implementation():
    rng = np.random.default_rng(0)
    target = rng.choice(np.array([0, 1, 255], dtype=np.uint8), size=(16, 1, 20, 24), p=[0.5, 0.4, 0.1])
    pred = rng.random((16, 1, 20, 24)) < 0.5
    target[3] = 0  # an image with no pet
    pred[3] = False  # ... correctly predicted empty
    ours = summarize(confusion_counts(torch.from_numpy(pred), torch.from_numpy(target), 255))
    for key, value in numpy_reference(pred, target).items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert ours["images"] == 16


def test_a_model_that_predicts_nothing_is_not_precise_and_is_counted():
    target = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    target[:3, :, 2:6, 2:6] = 1  # three images with a pet, one without
    nothing = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    counts = confusion_counts(nothing, target, 255)
    scores = summarize(counts)
    assert scores["precision_dataset"] == 0.0 and scores["precision_per_image"] == pytest.approx(0.25)
    assert degenerate_counts(counts) == {"empty_predictions": 4, "full_predictions": 0}
    assert degenerate_counts(confusion_counts(~nothing, target, 255)) == {"empty_predictions": 0, "full_predictions": 4}


def numpy_band(target: np.ndarray, width: int) -> np.ndarray:
    """Independent outline band: a pixel is in it when its (2w+1)^2 window holds both pet and not-pet."""
    pet = target == 1
    height, cols = pet.shape
    band = np.zeros_like(pet)
    for y in range(height):
        for x in range(cols):
            window = pet[max(0, y - width) : y + width + 1, max(0, x - width) : x + width + 1]
            band[y, x] = window.any() and not window.all()
    return band & (target != 255)


def test_outline_band_and_boundary_counts_match_numpy():
    rng = np.random.default_rng(1)
    target = np.zeros((12, 16), dtype=np.uint8)
    target[3:9, 4:12] = 1
    target[0, 0] = 255
    for width in (1, 2):
        ours = outline_band(torch.from_numpy(target)[None, None], width, 255)[0, 0].numpy()
        assert np.array_equal(ours, numpy_band(target, width)), width
    pred = rng.random((12, 16)) < 0.5
    band = numpy_band(target, 1)
    banded = torch.where(torch.from_numpy(band), torch.from_numpy(target), 255)[None, None]
    tp, fp, fn, _ = confusion_counts(torch.from_numpy(pred)[None, None], banded, 255)[0].tolist()
    truth = target == 1
    assert (tp, fp, fn) == (np.sum(pred & truth & band), np.sum(pred & ~truth & band), np.sum(~pred & truth & band))


def test_bootstrap_interval_matches_numpy_and_brackets_the_mean():
    values = np.random.default_rng(2).random(50)
    low, high = bootstrap_ci(values, resamples=500, seed=3)
    rng = np.random.default_rng(3)
    means = [values[rng.integers(0, 50, size=50)].mean() for _ in range(500)]
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert low < values.mean() < high and high - low < 0.25
    assert bootstrap_ci(values, resamples=500, seed=3) == (low, high)  # seeded


def test_loss_ignores_ignore_pixels_and_matches_bce():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).to(torch.uint8)
    target[:, :, :2] = 255
    changed = logits.clone()
    changed[:, :, :2] = 100.0  # wild logits where nothing is labelled
    loss = BCEDiceLoss(ignore_index=255)
    assert loss(logits, target) == pytest.approx(float(loss(changed, target)))
    valid = target != 255
    bce_only = BCEDiceLoss(bce_weight=1.0, dice_weight=0.0, ignore_index=255)(logits, target)
    assert bce_only == pytest.approx(float(F.binary_cross_entropy_with_logits(logits[valid], target[valid].float())))


def test_loss_is_small_for_a_confident_right_answer_and_large_for_a_wrong_one():
    target = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    target[..., 2:6, 2:6] = 1
    right = torch.where(target == 1, 10.0, -10.0)
    loss = BCEDiceLoss(ignore_index=255)
    assert float(loss(right, target)) < 0.01
    assert float(loss(-right, target)) > 5.0
