"""Adversarial examples for image classifiers: FGSM and PGD within an L-infinity budget on
[0, 1] pixels, the accuracy they leave, and the PGD examples adversarial training mixes in.

The models read standardised pixels (preprocess's normalisation); the budget is in the units
a user thinks in, intensities on [0, 1], so every attack works on that scale and hands the
model the standardised image.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.nn import functional as F

from pipeline import plots
from pipeline.augment import ImageScale
from pipeline.engine import Batches
from pipeline.metrics import classification_intervals


def perturb(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    scale: ImageScale,
    epsilon: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standardised images moved by at most `epsilon` per pixel (on [0, 1], kept inside
    it) to raise the loss of labels `y`. steps == 1 without a generator is FGSM (one step of
    epsilon); otherwise PGD: a random start, then `steps` signed-gradient steps of 2.5 *
    epsilon / steps, each projected back within epsilon. The model's weights get no
    gradient."""
    clean = scale.to_unit(x)
    adv = clean
    step = epsilon
    if generator is not None:
        noise = torch.rand(clean.shape, generator=generator, device=clean.device)
        adv = (clean + (2 * noise - 1) * epsilon).clamp(0, 1)
        step = 2.5 * epsilon / steps
    # cuDNN runs an RNN's backward only in training mode; the attack needs it in eval mode
    plain_rnn = torch.backends.cudnn.flags(enabled=False) if x.is_cuda else contextlib.nullcontext()
    with torch.enable_grad(), plain_rnn:
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            loss = F.cross_entropy(model(scale.from_unit(adv)), y)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach() + step * grad.sign()
            adv = torch.min(torch.max(adv, clean - epsilon), clean + epsilon).clamp(0, 1)
    return scale.from_unit(adv).detach()


def attack_accuracy(
    model, batches: Batches, schema: dict, attacks, clean: float, title: str
) -> tuple[dict, dict]:
    """Test accuracy of an image classifier under each declared attack, with a bootstrap 95%
    interval (metrics), and the accuracy-against-epsilon figure from the `clean` accuracy
    (figures). Batch by batch: the test split may be read from disk. Nothing for other
    inputs or without attacks."""
    if len(batches.input_shape) != 3 or not attacks:
        return {}, {}
    model.eval()
    scale = ImageScale(schema["normalization"])
    g = torch.Generator(device=batches.device).manual_seed(0)
    y_true = batches.y.cpu().numpy()
    num_classes = len(schema["classes"])
    metrics, curves = {}, {}
    for a in attacks:
        pred = []
        for xb, yb in batches:
            pgd = a.name == "pgd"
            adv = perturb(
                model, xb, yb, scale, a.epsilon, a.steps if pgd else 1, g if pgd else None
            )
            with torch.no_grad():
                pred.append(model(adv).argmax(1).cpu())
        y_pred = torch.cat(pred).numpy()
        key = f"test/attack/{a.name}_{a.epsilon:g}"
        accuracy = float(np.mean(y_pred == y_true))
        interval = classification_intervals(y_true, y_pred, num_classes, split=key)
        low, high = interval[f"{key}/accuracy_ci95_low"], interval[f"{key}/accuracy_ci95_high"]
        metrics[f"{key}/accuracy"] = accuracy
        metrics[f"{key}/accuracy_ci95_low"], metrics[f"{key}/accuracy_ci95_high"] = low, high
        curves.setdefault(a.name, []).append((a.epsilon, accuracy, low, high))
    return metrics, {"attacks": robustness_figure(curves, clean, title)}


def robustness_figure(curves: dict, clean: float, title: str):
    """Accuracy against epsilon per attack, from the clean accuracy at 0, with intervals."""
    fig, ax = plots.subplots(figsize=(5, 3.6), dpi=100)
    for name, points in curves.items():
        eps, acc, low, high = (np.array(v) for v in zip(*sorted(points), strict=True))
        ax.errorbar(
            np.r_[0, eps],
            np.r_[clean, acc],
            yerr=[np.r_[0, acc - low], np.r_[0, high - acc]],
            marker="o",
            capsize=3,
            label=name.upper(),
        )
    ax.set(
        xlabel="epsilon (L-infinity, [0, 1] pixels)",
        ylabel="test accuracy",
        ylim=(0, 1.02),
        title=f"{title}: accuracy under attack (95% intervals)",
    )
    ax.legend()
    fig.tight_layout()
    return fig
