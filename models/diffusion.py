"""A small DDPM: a noise schedule and a compact U-Net with a sinusoidal timestep embedding.

Trains by predicting the noise added at a random step; samples by ancestral sampling.
Images live in [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.configs import DiffusionConfig
from models.registry import DataSpec, register_model


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)  # (B,) -> (B, dim)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, time_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(t_emb)[:, :, None, None]  # add the timestep to every pixel
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """Two resolutions: (C, H, W) -> (c0, H, W) -> (c1, H/2, W/2) -> back, with a skip."""

    def __init__(self, config: DiffusionConfig, channels: int):
        super().__init__()
        c0, c1 = config.channels[0], config.channels[-1]
        td = config.time_dim
        self.time_dim = td
        self.time_mlp = nn.Sequential(nn.Linear(td, td), nn.SiLU(), nn.Linear(td, td))
        self.inp = nn.Conv2d(channels, c0, 3, padding=1)
        self.down = ResBlock(c0, c0, td)
        self.pool = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.mid1 = ResBlock(c0, c1, td)
        self.mid2 = ResBlock(c1, c1, td)
        self.up = ResBlock(c1 + c0, c0, td)
        self.out = nn.Sequential(
            nn.GroupNorm(min(8, c0), c0), nn.SiLU(), nn.Conv2d(c0, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.time_dim))
        skip = self.down(self.inp(x), emb)  # (B, c0, H, W)
        h = self.mid2(self.mid1(self.pool(skip), emb), emb)  # (B, c1, H/2, W/2)
        h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
        return self.out(self.up(torch.cat([h, skip], dim=1), emb))  # (B, C, H, W)


def make_betas(config: DiffusionConfig) -> torch.Tensor:
    if config.schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, config.timesteps)
    if config.schedule == "cosine":  # Nichol & Dhariwal 2021
        s, steps = 0.008, torch.arange(config.timesteps + 1, dtype=torch.float64)
        f = torch.cos((steps / config.timesteps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999).float()
    raise ValueError(f"unknown schedule {config.schedule!r}; choose cosine or linear")


class DDPM(nn.Module):
    def __init__(self, config: DiffusionConfig, spec: DataSpec):
        super().__init__()
        if len(spec.input_shape) != 3:
            raise ValueError(f"diffusion needs (C, H, W) images, got {tuple(spec.input_shape)}")
        self.config = config
        self.shape = tuple(spec.input_shape)
        self.unet = UNet(config, self.shape[0])
        betas = make_betas(config)
        alphas_bar = torch.cumprod(1 - betas, 0)
        self.register_buffer("betas", betas)
        self.register_buffer("alphas_bar", alphas_bar)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise in x_t at step t (the last step when t is None)."""
        if t is None:
            t = torch.full((len(x_t),), self.config.timesteps - 1, device=x_t.device)
        return self.unet(x_t, t)

    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the predicted noise at random steps."""
        n = len(x0)
        t = torch.randint(0, self.config.timesteps, (n,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        a = self.alphas_bar[t].view(n, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(self.unet(x_t, t), noise)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images in [-1, 1] by ancestral sampling from pure noise."""
        device = self.betas.device
        x = torch.randn((n, *self.shape), generator=generator).to(device)
        for step in reversed(range(self.config.timesteps)):
            t = torch.full((n,), step, device=device)
            beta, a_bar = self.betas[step], self.alphas_bar[step]
            eps = self.unet(x, t)
            x = (x - beta / (1 - a_bar).sqrt() * eps) / (1 - beta).sqrt()
            if step > 0:
                x = x + beta.sqrt() * torch.randn(x.shape, generator=generator).to(device)
        return x.clamp(-1, 1)


@register_model("diffusion", DiffusionConfig)
def build_diffusion(*, config: DiffusionConfig, spec: DataSpec) -> DDPM:
    return DDPM(config, spec)
