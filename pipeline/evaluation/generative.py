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
from pipeline.experiment import excluded_classes, load_judge, load_trained_model
from pipeline.metrics import auroc
from pipeline.tasks.generative import SAMPLE_SEED, unit_samples
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


def sample_quality(
    judge, real: torch.Tensor, fake: torch.Tensor, num_classes: int, requested=None
) -> dict:
    """Offline sample quality: Frechet distance in the judge's feature space, its confidence
    on the samples and how many classes it sees among them; for the samples of a conditional
    model, how often it sees the class that was asked for (`requested`)."""
    real_feats, _ = judge_features(judge, real)
    fake_feats, probs = judge_features(judge, fake)
    predicted = probs.argmax(1)
    counts = np.bincount(predicted, minlength=num_classes)
    agreement = {}
    if requested is not None:
        agreement["test/judge_agrees_with_class"] = float(np.mean(predicted == requested))
    return {
        **agreement,
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
    # the classes a conditional GAN or VAE was asked for (diffusion models take none)
    requested = model.random_labels(len(real)) if hasattr(model, "random_labels") else None
    metrics = sample_quality(
        judge,
        real,
        scale.from_unit(samples),
        schema["num_classes"],
        None if requested is None else requested.numpy(),
    )
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
        excluded = excluded_classes(i.exp, schema, i.experiment)
        if excluded:
            anomaly, roc = anomaly_scores(model, batches, scale, excluded, title)
            metrics.update(anomaly)
            figures["roc"] = roc
    return Evaluation(metrics, {"judge": "CNN classifier of judge@" + i.exp.dataset}, figures)


def vae_scores(model, judge, batches: Batches, scale: ImageScale) -> dict[str, float]:
    """ELBO (beta = 1, one latent sample per image, seeded) and the judge's accuracy on
    reconstructions of the test set."""
    torch.manual_seed(SAMPLE_SEED)
    unit = scale.to_unit(batches.x)
    labels = batches.y if model.num_classes else None
    recon, kl = elbo_terms(model, unit, labels)
    rebuilt = model.reconstruct(unit, labels)
    judged = judge(scale.from_unit(rebuilt)).argmax(1)
    return {
        "test/elbo": -(recon + kl).mean().item(),
        "test/recon_nll": recon.mean().item(),
        "test/kl": kl.mean().item(),
        "test/recon_mse": F.mse_loss(rebuilt, unit).item(),
        "test/judge_accuracy_on_reconstructions": (judged == batches.y).float().mean().item(),
    }


def elbo_terms(model, unit: torch.Tensor, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the reconstruction NLL and the KL term of one latent draw (nats); their
    sum is the negative ELBO with beta 1."""
    logits, mu, logvar = model(unit, labels)
    recon = F.binary_cross_entropy_with_logits(logits, unit, reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return recon, kl


def anomaly_scores(model, batches: Batches, scale: ImageScale, excluded: list[int], title: str):
    """The negative ELBO of each test image (beta 1, the mean over 8 seeded latent draws) as
    its anomaly score: how well it ranks the classes left out of training above the rest
    (AUROC with a bootstrap 95% interval) and the ROC curve."""
    from sklearn.metrics import roc_curve

    torch.manual_seed(SAMPLE_SEED)
    unit = scale.to_unit(batches.x)
    draws = 8
    score = torch.zeros(len(unit), device=unit.device)
    for _ in range(draws):
        recon, kl = elbo_terms(model, unit)
        score += (recon + kl) / draws
    score = score.cpu().numpy()
    unseen = np.isin(batches.y.cpu().numpy(), excluded)
    metrics = auroc(unseen.astype(int), score, "test", "anomaly_auroc")
    metrics["test/anomaly_fraction"] = float(unseen.mean())
    metrics["test/anomaly_score_unseen"] = float(score[unseen].mean())
    metrics["test/anomaly_score_seen"] = float(score[~unseen].mean())
    fpr, tpr, _ = roc_curve(unseen, score)
    fig = plots.roc_figure(
        fpr, tpr, metrics["test/anomaly_auroc"], f"{title}: unseen classes by negative ELBO"
    )
    return metrics, fig


def vae_figures(model, batches: Batches, scale: ImageScale, title: str) -> dict:
    labels = batches.y[:20] if model.num_classes else None
    unit = scale.to_unit(batches.x[:20])
    pairs = torch.stack([unit, model.reconstruct(unit, labels)], 1).flatten(0, 1)  # original, recon
    first = None if labels is None else labels[:10]
    mu = model.encode(unit[:10], first)[0]
    steps = torch.linspace(0, 1, 10, device=mu.device)[None, :, None]
    starts, ends = mu[0::2][:, None], mu[1::2][:, None]  # 5 pairs of test images
    path = (starts * (1 - steps) + ends * steps).flatten(0, 1)  # (5 * 10, Z)
    # a conditional model decodes the path with the first image's class
    path_labels = None if first is None else first[0::2].repeat_interleave(10)
    return {
        "reconstructions": plots.image_grid(
            pairs.cpu().numpy(), f"{title}: test image, reconstruction", ncols=10
        ),
        "interpolation": plots.image_grid(
            model.decode(path, path_labels).cpu().numpy(),
            f"{title}: latent interpolation",
            ncols=10,
        ),
    }


EVALUATORS = {kind: functools.partial(evaluate, kind) for kind in GENERATIVE}
