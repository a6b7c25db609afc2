"""MXResNet: fastai's XResNet ("bag of tricks" ResNet) with Mish activations, no self-attention.

The whole architecture on one screen:

- stem: three 3×3 conv–BN–Mish layers (32, 64, 64 channels, the first with stride 2),
  then a 3×3 stride-2 max-pool (`stem_pool="avg"`: an average pool, the same window, which makes
  the network a smooth function of its parameters: no max-pool kinks; order-effect checks). This is the stem of the published MXResNet (Less Wright's
  Mish XResNet, `(c_in+1)*8, 64, 64`); fastai's later xresnet uses 32, 32, 64. The
  published stem gives MXResNet-18 with 40 outputs its 11,243,976 parameters;
- four stages of residual blocks, widths 64, 128, 256, 512 (the first stage keeps the
  resolution, the others halve it); basic blocks (two 3×3 convs, expansion 1) for depths
  18 and 34, bottlenecks (1×1, 3×3, 1×1, expansion 4) for 50;
- shortcut: identity, or when the shape changes a 2×2 stride-2 average pool (ceil mode)
  followed by a 1×1 conv–BN without activation (ResNet-D);
- each block's last BatchNorm weight starts at zero, so every block starts as the
  identity (plus Mish after the sum);
- head: adaptive average pool, flatten, linear layer with `n_outputs` outputs.

Convolutions have no bias. Convolution and linear weights are Kaiming-normal initialised
and the linear bias zeroed, as fastai's `init_cnn` does. `width` multiplies every channel
count, the stem's included, each rounded to the nearest integer (at least 1): width 1.0
is the published network, 0.25 or 0.125 make small, fast profiles. Any input resolution
of at least 16 pixels works (the network downsamples by 32, ending at 1×1 or more).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
EXPANSION = {18: 1, 34: 1, 50: 4}
STEM_WIDTHS = (32, 64, 64)
STAGE_WIDTHS = (64, 128, 256, 512)


def conv_bn(n_in: int, n_out: int, kernel_size: int = 3, stride: int = 1, act: bool = True,
            zero_bn: bool = False) -> nn.Sequential:
    """Bias-free conv, BatchNorm (weight 1, or 0 when `zero_bn`), then Mish unless `act` is False."""
    bn = nn.BatchNorm2d(n_out)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    layers = [nn.Conv2d(n_in, n_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False), bn]
    if act:
        layers.append(nn.Mish())
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Residual block: Mish(convs(x) + shortcut(x)); `hidden` is the inner width."""

    def __init__(self, expansion: int, n_in: int, hidden: int, stride: int = 1):
        super().__init__()
        n_out = hidden * expansion
        if expansion == 1:
            convs = [conv_bn(n_in, hidden, 3, stride),
                     conv_bn(hidden, n_out, 3, act=False, zero_bn=True)]
        else:
            convs = [conv_bn(n_in, hidden, 1),
                     conv_bn(hidden, hidden, 3, stride),
                     conv_bn(hidden, n_out, 1, act=False, zero_bn=True)]
        self.convs = nn.Sequential(*convs)
        shortcut = []
        if stride != 1:
            shortcut.append(nn.AvgPool2d(2, stride, ceil_mode=True))
        if n_in != n_out:
            shortcut.append(conv_bn(n_in, n_out, 1, act=False))
        self.shortcut = nn.Sequential(*shortcut)  # empty Sequential is the identity
        self.act = nn.Mish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.shortcut(x))


def stem_pooling(kind: str = "max") -> nn.Module:
    """The stem's 3×3 stride-2 pooling: "max" (the published network) or "avg" (kink-free, same window)."""
    if kind == "max":
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
    raise ValueError(f"stem_pool must be 'max' or 'avg', got {kind!r}.")


def with_stem_pool(model: nn.Sequential, kind: str) -> nn.Sequential:
    """A copy of an mxresnet with its stem's pooling replaced by `kind`'s (the same parameters and buffers)."""
    twin = copy.deepcopy(model)
    at = [i for i, m in enumerate(twin) if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    if len(at) != 1:
        raise ValueError(f"Expected one stem pooling layer at the top level of the model, found {len(at)}.")
    twin[at[0]] = stem_pooling(kind)
    return twin


def mxresnet(depth: int = 18, n_outputs: int = 40, width: float = 1.0, in_channels: int = 3,
             stem_pool: str = "max") -> nn.Sequential:
    """MXResNet-`depth` (18, 34 or 50) with `n_outputs` logits and channel multiplier `width`; `stem_pool`
    "max" as published or "avg" (kink-free)."""
    if depth not in LAYERS:
        raise ValueError(f"Unknown depth {depth}. Choose one of: {', '.join(map(str, LAYERS))}.")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}.")
    expansion = EXPANSION[depth]

    def scaled(channels: int) -> int:
        return max(1, round(channels * width))

    stem_widths = [in_channels] + [scaled(c) for c in STEM_WIDTHS]
    stem = [conv_bn(stem_widths[i], stem_widths[i + 1], 3, stride=2 if i == 0 else 1) for i in range(3)]
    stem.append(stem_pooling(stem_pool))

    stages, n_in = [], stem_widths[-1]
    for i, (n_blocks, hidden) in enumerate(zip(LAYERS[depth], STAGE_WIDTHS)):
        hidden = scaled(hidden)
        blocks = []
        for j in range(n_blocks):
            blocks.append(ResBlock(expansion, n_in, hidden, stride=2 if i > 0 and j == 0 else 1))
            n_in = hidden * expansion
        stages.append(nn.Sequential(*blocks))

    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_in, n_outputs)]
    model = nn.Sequential(*stem, *stages, *head)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
