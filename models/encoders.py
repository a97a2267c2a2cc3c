"""Encoders f for seq-JEPA columns: a small CNN, an MLP, and a CIFAR-style ResNet-18.

Every encoder is a stack of ``blocks`` and returns the embedding and the globally pooled
output of every block::

    z, layers = encoder(x, detach_blocks=False)   # x (B, C, H, W) -> z (B, D), layers [(B, C_l)]

``detach_blocks=True`` feeds each block a detached input, so a loss on block l's output
trains block l only (layer-local rules: LPL, Halvagal & Zenke 2023; layerwise predictive
losses). The ResNet-18 follows seq-JEPA (Ghaemi et al. 2025, arXiv 2505.03176): torchvision's
layout without fc, 512-d output, no projector, with the CIFAR 3x3 stem for 32 px inputs
(He et al. 2016).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Encoder", "ConvEncoder", "MLPEncoder", "ResNet18Encoder", "build_encoder"]


class Encoder(nn.Module):
    """Base: ``blocks`` applied in order; ``width`` = D; ``pool`` reduces a block output to (B, C_l)."""

    width: int
    blocks: nn.ModuleList
    channels_last: bool = False  # set by the column: feed NHWC tensors to the blocks

    @staticmethod
    def pool(h: Tensor) -> Tensor:
        return h.mean(dim=(2, 3)) if h.dim() == 4 else h  # (B, C, H, W) -> (B, C)

    def forward(self, x: Tensor, detach_blocks: bool = False) -> "tuple[Tensor, list[Tensor]]":
        h = x
        if self.channels_last and x.dim() == 4:
            h = x.contiguous(memory_format=torch.channels_last)
        layers = []
        for block in self.blocks:
            h = block(h.detach() if detach_blocks else h)
            layers.append(self.pool(h))
        z = layers[-1]  # (B, D)
        norm = self._modules.get("out_norm")  # optional LayerNorm / BatchNorm1d (affine=False) set by build_encoder
        if norm is not None:
            if isinstance(norm, nn.BatchNorm1d) and self.training and z.shape[0] < 2:  # one sample has no batch statistics: use the running ones
                z = torch.nn.functional.batch_norm(z, norm.running_mean, norm.running_var, training=False, eps=norm.eps)
            else:
                z = norm(z)
        return z, layers


class ConvEncoder(Encoder):
    """CPU-sized conv encoder: per block Conv3x3 -> ReLU -> MaxPool2 (no normalisation, so
    batch statistics stay a property of the representation, as LPL's Hebbian term needs)."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128)):
        super().__init__()
        blocks = []
        c_in = in_channels
        for c in channels:
            conv = nn.Conv2d(c_in, c, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            blocks.append(nn.Sequential(conv, nn.ReLU(inplace=True), nn.MaxPool2d(2)))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.width = c_in


class MLPEncoder(Encoder):
    """Flatten -> [Linear -> ReLU] per block."""

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int] = (512, 256)):
        super().__init__()
        d_in = 1
        for s in in_shape:
            d_in *= s
        blocks: list[nn.Module] = []
        for i, h in enumerate(hidden):
            lin = nn.Linear(d_in, h)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
            blocks.append(nn.Sequential(nn.Flatten(), lin, nn.ReLU()) if i == 0 else nn.Sequential(lin, nn.ReLU()))
            d_in = h
        self.blocks = nn.ModuleList(blocks)
        self.width = d_in


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.short(x))


class ResNet18Encoder(Encoder):
    """ResNet-18 without fc (512-d). ``cifar_stem``: 3x3 conv, stride 1, no max-pool (32 px inputs).

    Blocks for layer-local rules: the stem, then the four residual stages.
    """

    def __init__(self, in_channels: int, cifar_stem: bool = True, base: int = 64):
        super().__init__()
        if cifar_stem:
            stem = nn.Sequential(nn.Conv2d(in_channels, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True))
        else:
            stem = nn.Sequential(nn.Conv2d(in_channels, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages = []
        c_in = base
        for i, c in enumerate((base, 2 * base, 4 * base, 8 * base)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_BasicBlock(c_in, c, stride), _BasicBlock(c, c, 1)))
            c_in = c
        self.blocks = nn.ModuleList([stem, *stages])
        self.width = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def build_encoder(kind: str, obs_shape: Sequence[int], channels: Sequence[int] = (32, 64, 128),
                  hidden: Sequence[int] = (512, 256), cifar_stem: bool = True,
                  output_norm: str = "none") -> Encoder:
    """``output_norm`` on z = the pooled last block (the per-block ``layers`` stay raw for layer-local rules):
    ``"layer"`` = LayerNorm(elementwise_affine=False), each sample over its units, no buffers;
    ``"batch"`` = BatchNorm1d(affine=False), each unit over the batch, with running statistics;
    ``"none"`` = none (``EncoderConfig`` maps the former booleans to these names)."""
    if kind == "cnn":
        enc: Encoder = ConvEncoder(obs_shape[0], channels)
    elif kind == "mlp":
        enc = MLPEncoder(obs_shape, hidden)
    elif kind == "resnet18":
        enc = ResNet18Encoder(obs_shape[0], cifar_stem=cifar_stem)
    else:
        raise ValueError(f"unknown encoder kind {kind!r}; valid: cnn, mlp, resnet18")
    if output_norm == "batch":
        enc.out_norm = nn.BatchNorm1d(enc.width, affine=False)
    elif output_norm == "layer":
        enc.out_norm = nn.LayerNorm(enc.width, elementwise_affine=False)
    elif output_norm != "none":
        raise ValueError(f"encoder.output_norm must be none, layer or batch, got {output_norm!r}")
    return enc
