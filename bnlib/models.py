"""Small torch models with Batch Normalization, sized for the digits (8 x 8 pixels).

Importing this module imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["mlp", "small_cnn", "batch_norm_layers"]


def _check_widths(widths: Any, name: str) -> list[int]:
    """``widths`` as a list of positive ints, or a ValueError naming the argument."""
    ok = isinstance(widths, Sequence) and not isinstance(widths, str) and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
    if not ok:
        raise ValueError(f"{name} must be a sequence of positive ints, e.g. (64, 64); got {widths!r}")
    return list(widths)


def mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (64, 64),
    num_classes: int = 10,
    batch_norm: bool = True,
    momentum: float | None = 0.1,
    seed: int | None = 0,
) -> nn.Sequential:
    """A multilayer perceptron: [Linear -> BatchNorm1d -> ReLU] per hidden layer -> Linear.

    Parameters
    ----------
    in_features : int, default 64
    hidden : sequence of int, default (64, 64)
        Width of each hidden layer.
    num_classes : int, default 10
    batch_norm : bool, default True
        Insert ``nn.BatchNorm1d`` after each hidden linear layer (which then has
        no bias: BN's beta replaces it).
    momentum : float or None, default 0.1
        PyTorch momentum alpha of every BN layer (weight of the new batch).
    seed : int or None, default 0
        Seed for the initial weights (``None``: use torch's global generator).

    Returns
    -------
    nn.Sequential
        Maps inputs of shape (N, in_features) to logits of shape (N, num_classes).

    Raises
    ------
    ValueError
        If ``hidden`` is not a sequence of positive ints.
    """
    hidden = _check_widths(hidden, "hidden")
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h, momentum=momentum))
        layers.append(nn.ReLU())
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(
    channels: Sequence[int] = (16, 32),
    num_classes: int = 10,
    batch_norm: bool = True,
    momentum: float | None = 0.1,
    seed: int | None = 0,
) -> nn.Sequential:
    """A small convolutional network for 8 x 8 single-channel images.

    [Conv3x3 -> BatchNorm2d -> ReLU] per entry of ``channels``, with a 2 x 2
    max-pool after the first block, then global average pooling and a linear
    classifier. Inputs of shape (N, 64) are reshaped to (N, 1, 8, 8).

    Parameters
    ----------
    channels : sequence of int, default (16, 32)
    num_classes : int, default 10
    batch_norm : bool, default True
    momentum : float or None, default 0.1
        PyTorch momentum alpha of every BN layer.
    seed : int or None, default 0

    Returns
    -------
    nn.Sequential
        Maps (N, 64) or (N, 1, 8, 8) inputs to logits of shape (N, num_classes).

    Raises
    ------
    ValueError
        If ``channels`` is not a sequence of positive ints.
    """
    channels = _check_widths(channels, "channels")
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Unflatten(1, (1, 8, 8))]
    width = 1
    for i, c in enumerate(channels):
        layers.append(nn.Conv2d(width, c, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c, momentum=momentum))
        layers.append(nn.ReLU())
        if i == 0:
            layers.append(nn.MaxPool2d(2))
        width = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return _FlexibleInput(nn.Sequential(*layers))


class _FlexibleInput(nn.Sequential):
    """Accept (N, 64) as well as (N, 1, 8, 8) inputs."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__(*body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.flatten(1)
        return super().forward(x)


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm1d/2d/3d (and SyncBatchNorm) module of ``model``, in order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
