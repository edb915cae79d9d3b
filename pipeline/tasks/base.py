"""The base of every task with one optimizer and one loss to minimise (the supervised tasks,
the VAE and diffusion); the GAN, with two, has its own. tasks.py and generative.py build on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from pipeline.engine import build_optimizer, optimizer_step
from pipeline.params.training import TrainParams


class SupervisedTask(ABC):
    """One optimizer, one loss to minimise (plus an optional L1 penalty on weights)."""

    val_metrics: tuple[str, ...] = ("val/loss",)

    def __init__(self, cfg: TrainParams, schema: dict):
        self.cfg = cfg
        self.schema = schema

    def optimizers(self, model: nn.Module) -> dict[str, torch.optim.Optimizer]:
        return {"model": build_optimizer(model.parameters(), self.cfg.optimizer)}

    @abstractmethod
    def loss(self, model, xb, yb) -> torch.Tensor:
        """The objective of one batch."""

    def train_step(self, model, xb, yb, optimizers) -> dict[str, torch.Tensor]:
        # bf16: the forward pass and loss under autocast, the backward pass outside it
        bf16 = self.cfg.precision == "bf16"
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = self.loss(model, xb, yb)
        total = loss + self.cfg.l1 * l1_penalty(model) if self.cfg.l1 else loss
        optimizer_step(total, optimizers["model"], model.parameters(), self.cfg.grad_clip)
        return {"loss": loss.detach()}


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels (biases and norms are not penalised)."""
    return sum(p.abs().sum() for p in model.parameters() if p.dim() > 1)
