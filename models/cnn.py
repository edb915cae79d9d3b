"""Convolutional classifier: conv blocks (optionally residual) with pooling, then an MLP head."""

from __future__ import annotations

import torch
from torch import nn

from models.configs import CNNConfig
from models.layers import activation, head
from models.registry import DataSpec, register_model


class ConvBlock(nn.Module):
    """conv -> [BN] -> act -> conv -> [BN] (+ skip) -> act -> 2x2 max-pool when the map allows."""

    def __init__(self, c_in: int, c_out: int, config: CNNConfig, pool: bool):
        super().__init__()
        k, bn = config.kernel_size, config.batch_norm

        def conv(a: int, b: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, k, padding=k // 2, bias=not bn)] + (
                [nn.BatchNorm2d(b)] if bn else []
            )

        self.body = nn.Sequential(
            *conv(c_in, c_out), activation(config.activation), *conv(c_out, c_out)
        )
        self.skip = None
        if config.residual:
            self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)
        self.act = activation(config.activation)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)  # (B, C_in, H, W) -> (B, C_out, H, W)
        if self.skip is not None:
            y = y + self.skip(x)
        return self.pool(self.act(y))  # -> (B, C_out, H/2, W/2) when pooling


class CNN(nn.Module):
    def __init__(
        self, config: CNNConfig, input_shape: tuple[int, ...], num_classes: int, binary=False
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs (C, H, W) inputs, got shape {tuple(input_shape)}")
        c, h, w = input_shape
        blocks = []
        for width in config.channels:
            pool = min(h, w) >= 2
            blocks.append(ConvBlock(c, width, config, pool))
            c, h, w = width, (h // 2 if pool else h), (w // 2 if pool else w)
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, config.hidden_size),
            activation(config.activation),
            nn.Dropout(config.dropout),
            head(config.hidden_size, num_classes, binary),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, C, H, W) -> (B, num_classes)


@register_model("cnn", CNNConfig)
def build_cnn(*, config: CNNConfig, spec: DataSpec) -> CNN:
    return CNN(config, spec.input_shape, spec.outputs, spec.binary)
