"""Test-split evaluation of the generative tasks: samples judged by the dataset's own
classifier (Frechet distance in its feature space, confidence, class coverage), beside the same
scores of an untrained model of the same architecture."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import functional as F

from pipeline import plots
from pipeline.augment import ImageScale
from pipeline.engine import Batches
from pipeline.evaluation.base import Evaluation, Inputs
from pipeline.experiment import load_judge, load_trained_model
from pipeline.tasks.generative import SAMPLE_SEED
from pipeline.tasks.kinds import GENERATIVE


@torch.no_grad()
def judge_features(judge, images: torch.Tensor, batch_size: int = 512):
    """Penultimate-layer features and class probabilities of the judge classifier."""
    judge.eval()
    feats, probs = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        h = judge.features(chunk)
        h = judge.head[:-1](h)  # everything but the last Linear: the feature space
        feats.append(h)
        probs.append(judge.head[-1](h).softmax(1))
    return torch.cat(feats).double().cpu().numpy(), torch.cat(probs).cpu().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    # a small ridge keeps the product well-conditioned (ReLU features are often rank-deficient)
    ridge = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def sample_quality(judge, real: torch.Tensor, fake: torch.Tensor, num_classes: int) -> dict:
    """Offline sample quality: Frechet distance in the judge's feature space, its confidence
    on the samples and how many classes it sees among them."""
    real_feats, _ = judge_features(judge, real)
    fake_feats, probs = judge_features(judge, fake)
    predicted = probs.argmax(1)
    counts = np.bincount(predicted, minlength=num_classes)
    return {
        "test/frechet_distance": frechet_distance(real_feats, fake_feats),
        "test/judge_confidence": float(probs.max(1).mean()),
        "test/class_coverage": int((counts > 0).sum()),
        "test/samples": len(fake),
    }


@torch.no_grad()
def evaluate(kind: str, i: Inputs) -> Evaluation:
    """Sample quality of the trained model and of its untrained twin (the baseline)."""
    device = i.batches.x.device
    judge = load_judge(i.exp.dataset).to(device)
    untrained = load_trained_model(i.experiment, trained=False).to(device)
    model, batches, schema, title = i.model, i.batches, i.schema, i.experiment
    scale = ImageScale(schema["normalization"])
    real = batches.x
    samples = unit_samples(kind, model, len(real))
    metrics = sample_quality(judge, real, scale.from_unit(samples), schema["num_classes"])
    floor = sample_quality(
        judge,
        real,
        scale.from_unit(unit_samples(kind, untrained, len(real))),
        schema["num_classes"],
    )
    metrics["test/frechet_distance_untrained"] = floor["test/frechet_distance"]
    metrics["test/frechet_distance_ratio_untrained"] = (
        metrics["test/frechet_distance"] / floor["test/frechet_distance"]
    )
    figures = {
        "samples": plots.image_grid(samples[:100].cpu().numpy(), f"{title}: samples", ncols=10)
    }
    if kind == "vae":
        metrics.update(vae_scores(model, judge, batches, scale))
        figures.update(vae_figures(model, batches, scale, title))
    return Evaluation(metrics, {"judge": "CNN classifier of judge@" + i.exp.dataset}, figures)


@torch.no_grad()
def unit_samples(kind: str, model, n: int) -> torch.Tensor:
    """`n` seeded samples in [0, 1]."""
    model.eval()
    g = torch.Generator().manual_seed(SAMPLE_SEED)
    if kind == "vae":
        return model.sample(n, generator=g)
    return (model.sample(n, generator=g) + 1) / 2


def vae_scores(model, judge, batches: Batches, scale: ImageScale) -> dict[str, float]:
    """ELBO (beta = 1, one latent sample per image, seeded) and the judge's accuracy on
    reconstructions of the test set."""
    torch.manual_seed(SAMPLE_SEED)
    unit = scale.to_unit(batches.x)
    logits, mu, logvar = model(unit)
    recon = F.binary_cross_entropy_with_logits(logits, unit, reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    rebuilt = model.reconstruct(unit)
    judged = judge(scale.from_unit(rebuilt)).argmax(1)
    return {
        "test/elbo": -(recon + kl).mean().item(),
        "test/recon_nll": recon.mean().item(),
        "test/kl": kl.mean().item(),
        "test/recon_mse": F.mse_loss(rebuilt, unit).item(),
        "test/judge_accuracy_on_reconstructions": (judged == batches.y).float().mean().item(),
    }


def vae_figures(model, batches: Batches, scale: ImageScale, title: str) -> dict:
    unit = scale.to_unit(batches.x[:20])
    pairs = torch.stack([unit, model.reconstruct(unit)], 1).flatten(0, 1)  # original, recon
    mu = model.encode(scale.to_unit(batches.x[:10]))[0]
    steps = torch.linspace(0, 1, 10, device=mu.device)[None, :, None]
    starts, ends = mu[0::2][:, None], mu[1::2][:, None]  # 5 pairs of test images
    path = (starts * (1 - steps) + ends * steps).flatten(0, 1)  # (5 * 10, Z)
    return {
        "reconstructions": plots.image_grid(
            pairs.cpu().numpy(), f"{title}: test image, reconstruction", ncols=10
        ),
        "interpolation": plots.image_grid(
            model.decode(path).cpu().numpy(), f"{title}: latent interpolation", ncols=10
        ),
    }


EVALUATORS = {kind: functools.partial(evaluate, kind) for kind in GENERATIVE}
