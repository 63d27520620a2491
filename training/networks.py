"""Localization networks (paper Fig. 2): a CNN regressing 12 affine parameters, and U-Nets predicting the mean
and log-variance of a stationary velocity field, built from dense blocks of 3x3x3 convolutions (proposed) or
from plain convolutions (baselines). Widths are configurable so each model of Table 2 can match its count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2))


class AffineLocalization(nn.Module):
    """Strided 3x3x3 convolutions, global average pooling, a linear layer to the 12 parameters.

    The last layer starts at zero, so the block starts as the identity transform.
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 16, 32, 32), in_channels: int = 2) -> None:
        super().__init__()
        layers, cin = [], in_channels
        for w in widths:
            layers.append(conv(cin, w, stride=2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 12)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=(2, 3, 4))
        return self.head(h)


class DenseBlock(nn.Module):
    """``layers`` 3x3x3 convolutions, each seeing the concatenation of the input and all earlier outputs."""

    def __init__(self, cin: int, growth: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv(cin + n * growth, growth) for n in range(layers))
        self.out_channels = cin + layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.convs:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class VelocityUNet(nn.Module):
    """U-Net to the velocity field's mean and log-variance (3 + 3 channels), or to a displacement (3 channels).

    ``dense=True``: each level is a dense block followed by a 1x1x1 transition (the proposed network);
    ``dense=False``: two plain convolutions per level (the baselines' "vanilla" U-Net).
    Outputs start near zero (a velocity of 0 is the identity) with a log-variance of ``init_log_var``.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 24, 32),
        dense: bool = True,
        growth: int = 8,
        layers_per_block: int = 2,
        probabilistic: bool = True,
        in_channels: int = 2,
        init_log_var: float = -10.0,
    ) -> None:
        super().__init__()
        self.probabilistic = probabilistic
        self.enc = nn.ModuleList()
        cin = in_channels
        skips = []
        for w in widths:
            self.enc.append(self._level(cin, w, dense, growth, layers_per_block))
            skips.append(w)
            cin = w
        self.bottom = self._level(cin, widths[-1], dense, growth, layers_per_block)
        self.dec = nn.ModuleList()
        cin = widths[-1]
        for w in reversed(skips):
            self.dec.append(self._level(cin + w, w, dense, growth, layers_per_block))
            cin = w
        self.mean = nn.Conv3d(cin, 3, 3, padding=1)
        nn.init.normal_(self.mean.weight, std=1e-5)
        nn.init.zeros_(self.mean.bias)
        if probabilistic:
            self.log_var = nn.Conv3d(cin, 3, 3, padding=1)
            nn.init.normal_(self.log_var.weight, std=1e-10)
            nn.init.constant_(self.log_var.bias, init_log_var)

    @staticmethod
    def _level(cin: int, cout: int, dense: bool, growth: int, layers: int) -> nn.Module:
        if dense:
            block = DenseBlock(cin, growth, layers)
            return nn.Sequential(block, nn.Conv3d(block.out_channels, cout, 1), nn.LeakyReLU(0.2))
        return nn.Sequential(conv(cin, cout), conv(cout, cout))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = unet_features(self.enc, self.bottom, self.dec, x)
        return self.mean(x), (self.log_var(x) if self.probabilistic else None)


def unet_features(enc: nn.ModuleList, bottom: nn.Module, dec: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """The U-Net pass shared by the velocity networks and the pseudo-label segmenter: each encoder level, then
    max-pooling; the bottom; each decoder level on the upsampled features concatenated with its skip."""
    skips = []
    for level in enc:
        x = level(x)
        skips.append(x)
        x = F.max_pool3d(x, 2)
    x = bottom(x)
    for level, skip in zip(dec, reversed(skips), strict=True):
        x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
        x = level(torch.cat([x, skip], dim=1))
    return x


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
