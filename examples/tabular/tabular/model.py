"""A multilayer perceptron with BatchNorm and dropout, built for whatever rst-tune's data needs."""

import math

from torch import nn


def mlp(
    num_classes: int, input_shape: tuple[int, ...], width: int = 256, depth: int = 3, dropout: float = 0.1
):
    """`depth` hidden layers of `width` units (Linear, BatchNorm, ReLU, dropout), then a linear layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    inputs = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(inputs, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout)]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, num_classes))
