"""Small layers shared by the modules and the model."""

from __future__ import annotations

from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1, device=None, dtype=None) -> nn.Conv2d:
    """A 3×3 convolution with padding 1: (B, cin, H, W) -> (B, cout, ⌈H/stride⌉, ⌈W/stride⌉)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, device=device, dtype=dtype)
