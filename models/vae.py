"""Variational autoencoder (conv or MLP) with a Bernoulli decoder on [0, 1] intensities.

loss = reconstruction (nats per image) + beta * KL(q(z|x) || N(0, I)); with beta = 1 the loss
is the negative ELBO in nats per image. A conditional VAE gives the encoder and the decoder
the class as a one-hot vector, so `sample` draws images of the classes asked for.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.configs import VAEConfig
from models.layers import activation
from models.registry import DataSpec, register_model


class VAE(nn.Module):
    def __init__(self, config: VAEConfig, spec: DataSpec):
        super().__init__()
        self.config = config
        self.shape = tuple(spec.input_shape)
        self.num_classes = spec.num_classes if config.conditional else 0
        k = self.num_classes
        act = config.activation
        if config.variant == "conv":
            c, h, w = self.shape
            c1, c2 = config.channels[0], config.channels[-1]
            self.grid = (c2, h // 2, w // 2)
            flat = math.prod(self.grid)
            self.encoder = nn.Sequential(
                nn.Conv2d(c, c1, 3, padding=1),
                activation(act),
                nn.Conv2d(c1, c2, 4, stride=2, padding=1),
                activation(act),  # -> (c2, H/2, W/2)
                nn.Flatten(),
            )
            self.decoder = nn.Sequential(
                nn.Linear(config.latent_dim + k, flat),
                activation(act),
                nn.Unflatten(1, self.grid),
                nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
                activation(act),  # -> (c1, H, W)
                nn.Conv2d(c1, c, 3, padding=1),
            )
        elif config.variant == "mlp":
            flat = math.prod(self.shape)
            self.encoder = nn.Sequential(
                nn.Flatten(), nn.Linear(flat, config.hidden_size), activation(act)
            )
            flat = config.hidden_size
            self.decoder = nn.Sequential(
                nn.Linear(config.latent_dim + k, config.hidden_size),
                activation(act),
                nn.Linear(config.hidden_size, math.prod(self.shape)),
                nn.Unflatten(1, self.shape),
            )
        else:
            raise ValueError(f"unknown vae variant {config.variant!r}; choose conv or mlp")
        self.to_latent = nn.Linear(flat + k, 2 * config.latent_dim)

    def _with(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """`h` with the one-hot class appended (conditional models; labels required)."""
        if not self.num_classes:
            return h
        if labels is None:
            raise ValueError("a conditional VAE needs the class labels")
        return torch.cat([h, F.one_hot(labels, self.num_classes).to(h.dtype)], dim=1)

    def encode(self, x: torch.Tensor, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._with(self.encoder(x), labels)
        mu, logvar = self.to_latent(h).chunk(2, dim=1)  # (B, Z) each
        return mu, logvar.clamp(-10, 10)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        """x in [0, 1] -> (decoder logits like x, mu, logvar). A conditional model called
        without labels (MLflow's signature check of the logged model) reads class 0, as the
        conditional GAN does."""
        if self.num_classes and labels is None:
            labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
        mu, logvar = self.encode(x, labels)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation
        return self.decoder(self._with(z, labels)), mu, logvar

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-image means of reconstruction NLL, KL and their beta-weighted sum."""
        logits, mu, logvar = self(x, labels)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return {
            "loss": (recon + self.config.beta * kl).mean(),
            "recon": recon.mean(),
            "kl": kl.mean(),
        }

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, labels)[0], labels)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self._with(z, labels)))

    def random_labels(self, n: int) -> torch.Tensor | None:
        """The classes `sample` draws: each in turn (conditional models), else None."""
        return torch.arange(n) % self.num_classes if self.num_classes else None

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images in [0, 1] decoded from the prior; conditional models cycle through the
        classes."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        labels = self.random_labels(n)
        return self.decode(z, None if labels is None else labels.to(device))


@register_model("vae", VAEConfig)
def build_vae(*, config: VAEConfig, spec: DataSpec) -> VAE:
    return VAE(config, spec)
