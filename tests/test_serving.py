"""The NumPy half every backend shares: model inputs, probabilities and masks at a photo's size, the same numbers
as PyTorch's own operations, so an `.onnx` served without PyTorch gives the masks the scored model gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from petseg.data.transforms import eval_transforms
from petseg.evaluation.masks import mask_at_size
from petseg.models import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD
from petseg.serving import normalized, sigmoid


@pytest.mark.parametrize(("mean", "std"), [(HALF_MEAN, HALF_STD), (IMAGENET_MEAN, IMAGENET_STD)])
def test_model_inputs_are_the_evaluation_transforms_bit_for_bit(mean, std):
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    scored = eval_transforms(mean, std)(tv_tensors.Image(torch.from_numpy(images).permute(0, 3, 1, 2)))
    ours = normalized(images, mean, std)
    assert ours.dtype == np.float32 and ours.shape == (3, 3, 32, 32) and ours.flags.c_contiguous
    assert np.array_equal(ours, scored.as_subclass(torch.Tensor).numpy())


def test_sigmoid_matches_torch_and_never_overflows():
    logits = np.array([-1e4, -88.0, -3.0, 0.0, 2.5, 88.0, 1e4], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ours = sigmoid(logits)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, torch.sigmoid(torch.from_numpy(logits)).numpy(), rtol=1e-6, atol=1e-30)
    assert ours[0] == 0.0 and ours[3] == 0.5 and ours[-1] == 1.0


@pytest.mark.parametrize(("side", "width", "height"), [(64, 500, 375), (64, 37, 1000), (128, 128, 128), (32, 3, 700)])
def test_masks_at_photo_size_are_torchs_bilinear_resize(side, width, height):
    probability = torch.rand(side, side, generator=torch.Generator().manual_seed(side + width))
    expected = F.interpolate(probability[None, None], size=(height, width), mode="bilinear")[0, 0] > 0.5
    mask = mask_at_size(probability.numpy(), width, height, 0.5)
    assert mask.shape == (height, width) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, expected.numpy())
