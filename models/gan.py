"""GAN: DCGAN-style convolutional generator and discriminator (or MLPs for flat data),
optionally class-conditional. Images live in [-1, 1] (tanh)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.configs import GANConfig
from models.registry import DataSpec, register_model


class Generator(nn.Module):
    def __init__(self, config: GANConfig, shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.shape = shape
        z = config.latent_dim + num_classes
        if config.variant == "conv":
            c, h, w = shape
            if h % 4 or w % 4:
                raise ValueError(f"conv gan needs H and W divisible by 4, got {shape}")
            base = config.channels
            self.net = nn.Sequential(
                nn.Linear(z, 2 * base * (h // 4) * (w // 4)),
                nn.Unflatten(1, (2 * base, h // 4, w // 4)),
                nn.BatchNorm2d(2 * base),
                nn.ReLU(),
                nn.ConvTranspose2d(2 * base, base, 4, 2, 1),  # -> (base, H/2, W/2)
                nn.BatchNorm2d(base),
                nn.ReLU(),
                nn.ConvTranspose2d(base, c, 4, 2, 1),  # -> (C, H, W)
                nn.Tanh(),
            )
        else:
            hid, flat = config.hidden_size, math.prod(shape)
            self.net = nn.Sequential(
                nn.Linear(z, hid),
                nn.BatchNorm1d(hid),
                nn.ReLU(),
                nn.Linear(hid, hid),
                nn.BatchNorm1d(hid),
                nn.ReLU(),
                nn.Linear(hid, flat),
                nn.Tanh(),
                nn.Unflatten(1, shape),
            )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, Z [+ classes]) -> (B, *shape)


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig, shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if config.variant == "conv":
            c, h, w = shape
            base = config.channels
            self.net = nn.Sequential(
                nn.Conv2d(c + num_classes, base, 4, 2, 1),
                nn.LeakyReLU(0.2),  # -> H/2
                nn.Conv2d(base, 2 * base, 4, 2, 1),
                nn.LeakyReLU(0.2),  # -> H/4
                nn.Flatten(),
                nn.Dropout(0.3),
                nn.Linear(2 * base * (h // 4) * (w // 4), 1),
            )
        else:
            hid = config.hidden_size
            self.net = nn.Sequential(
                nn.Flatten(),
                nn.Linear(math.prod(shape) + num_classes * math.prod(shape[1:]), hid),
                nn.LeakyReLU(0.2),
                nn.Dropout(0.3),
                nn.Linear(hid, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)  # (B, C [+ classes], H, W) -> (B,) logits


class GAN(nn.Module):
    def __init__(self, config: GANConfig, spec: DataSpec):
        super().__init__()
        if config.variant not in ("conv", "mlp"):
            raise ValueError(f"unknown gan variant {config.variant!r}; choose conv or mlp")
        self.config = config
        self.shape = tuple(spec.input_shape)
        self.num_classes = spec.num_classes if config.conditional else 0
        self.generator = Generator(config, self.shape, self.num_classes)
        self.discriminator = Discriminator(config, self.shape, self.num_classes)

    def _with_labels(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Append one-hot label planes to images (the conditional discriminator's input)."""
        if not self.num_classes:
            return x
        onehot = F.one_hot(labels, self.num_classes).to(x.dtype)
        planes = onehot[:, :, None, None].expand(-1, -1, *x.shape[2:]) if x.dim() == 4 else onehot
        return torch.cat([x, planes], dim=1)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        return self.generator(z)

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.discriminator(self._with_labels(x, labels))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Discriminator logits of real-or-fake for images x in [-1, 1]."""
        if self.num_classes and labels is None:
            labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
        return self.discriminate(x, labels)

    def random_labels(self, n: int) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        return torch.arange(n) % self.num_classes  # balanced over classes

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images in [-1, 1]; conditional models cycle through the classes."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        labels = self.random_labels(n)
        return self.generate(z, None if labels is None else labels.to(device))


@register_model("gan", GANConfig)
def build_gan(*, config: GANConfig, spec: DataSpec) -> GAN:
    return GAN(config, spec)
