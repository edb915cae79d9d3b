"""Multi-layer perceptron: flattens its input; Linear -> [BatchNorm] -> activation -> dropout."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.configs import MLPConfig
from models.layers import activation, head
from models.registry import DataSpec, register_model


class MLP(nn.Module):
    def __init__(self, config: MLPConfig, in_features: int, out_features: int, binary=False):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for hidden in config.hidden_sizes:
            layers.append(nn.Linear(width, hidden, bias=not config.batch_norm))
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers += [activation(config.activation), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(head(width, out_features, binary))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, *input_shape) -> (B, out_features)


@register_model("mlp", MLPConfig)
def build_mlp(*, config: MLPConfig, spec: DataSpec) -> MLP:
    return MLP(config, math.prod(spec.input_shape), spec.outputs, spec.binary)
