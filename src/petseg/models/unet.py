"""The classic UNet of the reference report: 64 -> 1024 channels, ConvTranspose up, skip concat."""

from __future__ import annotations

import torch
from torch import nn

from petseg.models.blocks import DoubleConv, UpBlock


class UNet(nn.Module):
    def __init__(self, base_channels: int = 64, batch_norm: bool = False, in_channels: int = 3):
        super().__init__()
        widths = [base_channels * 2**i for i in range(5)]  # 64, 128, 256, 512, 1024
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            DoubleConv(c_in, c_out, batch_norm) for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        self.decoder = nn.ModuleList(
            UpBlock(widths[i], widths[i - 1], widths[i - 1], batch_norm) for i in range(len(widths) - 1, 0, -1)
        )
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(x, skips.pop())
        return self.head(x)
