"""UNet with a torchvision ResNet34 encoder (so ImageNet weights can be loaded) and a UNet decoder."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal
from urllib.error import URLError

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet34_Weights, resnet34

from petseg.errors import PetsegError, first_line
from petseg.models.blocks import UpBlock


def _imagenet_state_dict(weights_path: str | None) -> dict[str, torch.Tensor]:
    if weights_path:
        try:
            return torch.load(weights_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as err:
            raise PetsegError(f"train.res34.weights_path: cannot load {weights_path} ({first_line(err)})") from None
    weights = ResNet34_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except (URLError, OSError) as err:
        file_name = Path(weights.url).name
        raise PetsegError(
            f"train.res34.pretrained=imagenet: cannot get {weights.url} ({err}); offline, put {file_name} in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} or set train.res34.weights_path to a local copy"
        ) from None


class Res34UNet(nn.Module):
    def __init__(self, pretrained: Literal[False, "imagenet"] = False, weights_path: str | None = None):
        super().__init__()
        encoder = resnet34(weights=None)
        if pretrained == "imagenet":
            try:
                encoder.load_state_dict(_imagenet_state_dict(weights_path))
            except RuntimeError as err:
                raise PetsegError(f"train.res34: the weights are not a torchvision ResNet34 ({err})") from None
        self.stem = nn.Sequential(encoder.conv1, encoder.bn1, encoder.relu)  # 64 ch, 1/2
        self.pool = encoder.maxpool
        self.layers = nn.ModuleList([encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4])  # 1/4 .. 1/32
        self.decoder = nn.ModuleList(
            [
                UpBlock(512, 256, 256, batch_norm=True),
                UpBlock(256, 128, 128, batch_norm=True),
                UpBlock(128, 64, 64, batch_norm=True),
                UpBlock(64, 64, 64, batch_norm=True),
            ]
        )
        self.head = nn.Conv2d(64, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = [self.stem(x)]
        y = self.pool(skips[0])
        for layer in self.layers:
            y = layer(y)
            skips.append(y)
        y = skips.pop()
        for block in self.decoder:
            y = block(y, skips.pop())
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)
