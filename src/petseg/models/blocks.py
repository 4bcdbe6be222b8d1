"""Building blocks shared by the UNet decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """(3x3 conv [+ BN] + ReLU) x 2, as in the UNet paper (padded, so sizes are kept)."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False):
        layers: list[nn.Module] = []
        for channels_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(channels_in, out_channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UpBlock(nn.Module):
    """ConvTranspose2d(2, stride 2) up, concatenate the skip, DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, batch_norm: bool = False):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(out_channels + skip_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            # Odd sizes upstream lose a pixel in pooling; match the skip so any input size works.
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))
