"""The generative tasks (VAE, GAN, diffusion): their training steps and validation.

Processed images are standardised; these tasks map them back to [0, 1] (VAE) or [-1, 1]
(GAN, diffusion) with the saved train statistics.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pipeline.augment import ImageScale
from pipeline.engine import Batches, build_optimizer, optimizer_step
from pipeline.errors import PipelineError
from pipeline.params.training import TrainParams
from pipeline.tasks.base import SupervisedTask
from pipeline.tasks.kinds import KINDS

SAMPLE_SEED = 1234  # fixed: validation and evaluation samples are the same on every run


@torch.no_grad()
def unit_samples(kind: str, model, n: int, generator=None) -> torch.Tensor:
    """`n` samples in [0, 1], drawn with `generator` (default: seeded with SAMPLE_SEED)."""
    model.eval()
    g = torch.Generator().manual_seed(SAMPLE_SEED) if generator is None else generator
    if kind == "vae":
        return model.sample(n, generator=g)
    return (model.sample(n, generator=g) + 1) / 2


class ImageTask(SupervisedTask):
    """A generative model trained on one loss over images mapped back from their processed
    (standardised) scale."""

    def __init__(self, cfg: TrainParams, schema: dict):
        super().__init__(cfg, schema)
        self.scale = ImageScale(schema["normalization"])


class VAETask(ImageTask):
    val_metrics = KINDS["vae"].val_metrics

    def loss(self, model, xb, yb):
        return model.loss(self.scale.to_unit(xb), yb)["loss"]

    def train_step(self, model, xb, yb, optimizers):
        out = model.loss(self.scale.to_unit(xb), yb)  # labels: read by conditional models
        optimizer_step(out["loss"], optimizers["model"], model.parameters(), self.cfg.grad_clip)
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def validate(self, model, batches: Batches) -> dict[str, float]:
        model.eval()
        sums = torch.zeros(3, device=batches.device)
        for xb, yb in batches:
            out = model.loss(self.scale.to_unit(xb), yb)
            sums += torch.stack([out["loss"], out["recon"], out["kl"]]) * len(xb)
        loss, recon, kl = (sums / len(batches.y)).tolist()
        return {"val/loss": loss, "val/recon": recon, "val/kl": kl}


class DiffusionTask(ImageTask):
    val_metrics = KINDS["diffusion"].val_metrics

    def loss(self, model, xb, yb):
        return model.loss(self.scale.to_unit(xb) * 2 - 1)

    @torch.no_grad()
    def validate(self, model, batches: Batches) -> dict[str, float]:
        model.eval()
        g = torch.Generator().manual_seed(SAMPLE_SEED)  # same noise every epoch: comparable
        total = torch.zeros((), device=batches.device)
        for xb, _ in batches:
            total += model.loss(self.scale.to_unit(xb) * 2 - 1, generator=g) * len(xb)
        return {"val/loss": (total / len(batches.y)).item()}


class GANTask:
    """Adversarial training: `d_steps` discriminator steps per generator step, one-sided
    label smoothing, separate optimizers, and a collapse detector."""

    val_metrics = KINDS["gan"].val_metrics

    def __init__(self, cfg: TrainParams, schema: dict):
        self.cfg, self.adv = cfg, cfg.adversarial
        self.scale = ImageScale(schema["normalization"])
        self.low_run = self.longest_low_run = None  # consecutive near-zero D-loss steps

    def optimizers(self, model):
        return {
            "generator": build_optimizer(model.generator.parameters(), self.cfg.optimizer),
            "discriminator": build_optimizer(
                model.discriminator.parameters(), self.cfg.optimizer, lr=self.adv.d_lr
            ),
        }

    def d_loss(self, model, real, fake, labels):
        d_real, d_fake = model.discriminate(real, labels), model.discriminate(fake, labels)
        return F.binary_cross_entropy_with_logits(
            d_real, torch.full_like(d_real, self.adv.real_label)
        ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))

    def g_loss(self, model, fake, labels):
        d_fake = model.discriminate(fake, labels)
        return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))

    def train_step(self, model, xb, yb, optimizers):
        real = self.scale.to_unit(xb) * 2 - 1
        labels = yb if model.num_classes else None
        z_dim = model.config.latent_dim
        for _ in range(self.adv.d_steps):
            fake = model.generate(torch.randn(len(xb), z_dim, device=xb.device), labels).detach()
            d_loss = self.d_loss(model, real, fake, labels)
            optimizer_step(
                d_loss,
                optimizers["discriminator"],
                model.discriminator.parameters(),
                self.cfg.grad_clip,
            )
        fake = model.generate(torch.randn(len(xb), z_dim, device=xb.device), labels)
        g_loss = self.g_loss(model, fake, labels)
        optimizer_step(
            g_loss, optimizers["generator"], model.generator.parameters(), self.cfg.grad_clip
        )
        # counted on the device: no host sync per step; checked once per epoch in validate
        low = (d_loss.detach() < self.adv.collapse_loss).long()
        if self.low_run is None:
            self.low_run = self.longest_low_run = torch.zeros(
                (), dtype=torch.long, device=xb.device
            )
        self.low_run = (self.low_run + 1) * low
        self.longest_low_run = torch.maximum(self.longest_low_run, self.low_run)
        return {"loss": g_loss.detach(), "d_loss": d_loss.detach()}

    @torch.no_grad()
    def validate(self, model, batches: Batches) -> dict[str, float]:
        model.eval()
        low_steps = 0 if self.longest_low_run is None else self.longest_low_run.item()
        if low_steps >= self.adv.collapse_steps:
            raise PipelineError(
                f"GAN collapsed: discriminator loss stayed below {self.adv.collapse_loss} for "
                f"{low_steps} steps, so the generator gets no signal; lower "
                "train.adversarial.d_lr or train.adversarial.d_steps"
            )
        real = self.scale.to_unit(batches.head(len(batches.y))) * 2 - 1
        labels = batches.y if model.num_classes else None
        g = torch.Generator().manual_seed(SAMPLE_SEED)
        z = torch.randn(len(real), model.config.latent_dim, generator=g).to(real.device)
        fake = model.generate(z, labels)
        diversity = spread(fake) / spread(real)
        if diversity < self.adv.min_diversity:
            raise PipelineError(
                f"GAN collapsed: samples are near-identical (spread {diversity:.3f} of the real "
                f"images', below train.adversarial.min_diversity={self.adv.min_diversity})"
            )
        d_loss, g_loss = self.d_loss(model, real, fake, labels), self.g_loss(model, fake, labels)
        return {"val/loss": g_loss.item(), "val/d_loss": d_loss.item(), "val/diversity": diversity}


def spread(images: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between images (0 when all are the same)."""
    flat = images.flatten(1)[:256].double()
    return torch.cdist(flat, flat).mean().item()


TRAINERS = {"vae": VAETask, "gan": GANTask, "diffusion": DiffusionTask}
