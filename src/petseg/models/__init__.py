"""Model registry: ``build_model(name, **params)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from petseg.errors import PetsegError
from petseg.models.res34_unet import Res34UNet
from petseg.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {"unet": UNet, "res34": Res34UNet}

# ImageNet statistics for a pretrained encoder; the reference's 0.5/0.5 otherwise.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def build_model(name: str, **params: Any) -> nn.Module:
    if name not in MODELS:
        raise PetsegError(f"unknown model {name!r} (allowed: {', '.join(MODELS)})")
    return MODELS[name](**params)


def model_from_weights(name: str, params: dict[str, Any], state_dict: dict) -> nn.Module:
    """Rebuild a trained model without fetching any initial weights (they are overwritten anyway)."""
    model = build_model(name, **{k: v for k, v in params.items() if k not in ("pretrained", "weights_path")})
    model.load_state_dict(state_dict)
    return model.eval()


class FlipAveraged(nn.Module):
    """Flip test-time augmentation inside the model: the mean of the logits for the photo and for its mirror image
    (mirrored back). As a module, every backend that runs the model (PyTorch, the pyfunc, the ONNX export) serves
    exactly what the evaluate stage scored."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # named as the models name it: the ONNX export's dynamic dims
        return self.with_plain(x)[0]

    def with_plain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the flip-averaged logits, the network's own): one pass scores the model with and without TTA."""
        plain = self.model(x)
        return (plain + torch.flip(self.model(torch.flip(x, dims=[-1])), dims=[-1])) / 2, plain


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """``model`` as ``evaluate.tta`` serves it: "none" as it is, "hflip" flip-averaged."""
    if tta not in ("none", "hflip"):
        raise PetsegError(f"unknown test-time augmentation {tta!r} (allowed: none, hflip)")
    return FlipAveraged(model).eval() if tta == "hflip" else model


def normalization(params: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if params.get("pretrained") == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return HALF_MEAN, HALF_STD
