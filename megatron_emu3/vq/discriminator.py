"""Patch-GAN discriminators (taming-transformers' NLayerDiscriminator) and the GAN losses.

`PatchDiscriminator(dims=2)` scores frames (N, 3, H, W); `dims=3` scores clips (N, 3, T, H, W) with
3x4x4 kernels that stride only in space. GroupNorm replaces taming's BatchNorm so a sample's score
never depends on the rest of its batch: a data-parallel run then computes what one rank would.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


class PatchDiscriminator(nn.Module):
    def __init__(self, dims: int = 2, channels: int = 64, layers: int = 3):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        kernel = 4 if dims == 2 else (3, 4, 4)
        pad = 1
        down = 2 if dims == 2 else (1, 2, 2)
        seq = [conv(3, channels, kernel, down, pad), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = down if n < layers else 1
            seq += [conv(channels * prev, channels * mult, kernel, stride, pad, bias=False),
                    _norm(channels * mult), nn.LeakyReLU(0.2)]
        seq.append(conv(channels * mult, 1, kernel, 1, pad))
        self.net = nn.Sequential(*seq)
        self.dims = dims
        for module in self.modules():  # taming's weights_init
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()
