"""Test-split evaluation, one function per task, each beside a classical baseline where one fits.

Every function returns an `Evaluation`: `split/metric` numbers for DVC, MLflow and the report,
details for JSON, and figures saved as PNG.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from pipeline import plots
from pipeline.engine import Batches, predict
from pipeline.metrics import classification_intervals, classification_metrics, rmse_interval

CONFUSION_HEADER = "actual,predicted\n"


@dataclass
class Evaluation:
    metrics: dict[str, float]
    details: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)  # file stem -> matplotlib figure
    confusion_csv: str = CONFUSION_HEADER  # rows only for classification


def classification(
    model, batches: Batches, schema: dict, title: str, train: tuple[np.ndarray, np.ndarray]
) -> Evaluation:
    """Accuracy and F1 with bootstrap 95% intervals, beside a logistic regression fitted on
    the train split's flattened inputs in the same run."""
    logits = predict(model, batches)
    y_true = batches.y.cpu().numpy()
    y_pred = logits.argmax(1).cpu().numpy()
    classes = schema["classes"]
    metrics, per_class, confusion = classification_metrics(y_true, y_pred, classes)
    metrics.update(classification_intervals(y_true, y_pred, len(classes)))
    metrics["test/loss"] = F.cross_entropy(logits, batches.y).item()
    baseline_pred = baseline_classifier(*train, batches.x.cpu().numpy())
    baseline, _, _ = classification_metrics(y_true, baseline_pred, classes)
    metrics["test/baseline_accuracy"] = baseline["test/accuracy"]
    metrics["test/accuracy_ratio_baseline"] = metrics["test/accuracy"] / max(
        baseline["test/accuracy"], 1e-12
    )
    metrics["test/samples"] = len(y_true)
    rows = "".join(f"{classes[t]},{classes[p]}\n" for t, p in zip(y_true, y_pred, strict=True))
    fig = plots.confusion_figure(confusion, classes, f"{title}: test confusion matrix")
    details = {
        "per_class": per_class,
        "baselines": {"logistic_regression": {k.split("/")[1]: v for k, v in baseline.items()}},
    }
    return Evaluation(metrics, details, {"confusion": fig}, CONFUSION_HEADER + rows)


BASELINE_MAX_ROWS = 5000  # a seeded subset keeps the baseline quick on large datasets


def baseline_classifier(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray):
    """Predictions of scikit-learn's logistic regression on flattened inputs (token ids
    become bag-of-token counts)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_y) > BASELINE_MAX_ROWS:
        keep = np.random.default_rng(0).choice(len(train_y), BASELINE_MAX_ROWS, replace=False)
        train_x, train_y = train_x[keep], train_y[keep]

    def features(x: np.ndarray) -> np.ndarray:
        if np.issubdtype(x.dtype, np.integer):  # token ids
            vocab = int(max(train_x.max(), test_x.max())) + 1
            return np.stack([np.bincount(row.ravel(), minlength=vocab) for row in x])
        return x.reshape(len(x), -1)

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(features(train_x), train_y)
    return model.predict(features(test_x))


def forecasting(
    model, batches: Batches, arrays: dict, train_series, schema: dict, title: str
) -> Evaluation:
    """Errors in original units beside naive persistence and an AR model fitted on train."""
    mean, std = schema["scaler"]["mean"], schema["scaler"]["std"]
    pred = predict(model, batches).cpu().numpy() * std + mean  # (N, horizon)
    actual = arrays["y"] * std + mean
    inputs = arrays["x"][:, :, 0] * std + mean  # (N, lookback), original units
    persistence = np.repeat(arrays["last_input"][:, None], actual.shape[1], axis=1)
    ar, lags = ar_forecasts(train_series, inputs, actual.shape[1])
    metrics = {f"test/{k}": v for k, v in regression_errors(actual, pred).items()}
    metrics.update(rmse_interval((actual - pred) ** 2))
    baselines = {
        "persistence": regression_errors(actual, persistence),
        "ar": {**regression_errors(actual, ar), "lags": lags},
    }
    metrics["test/rmse_ratio_persistence"] = metrics["test/rmse"] / baselines["persistence"]["rmse"]
    metrics["test/rmse_ratio_ar"] = metrics["test/rmse"] / baselines["ar"]["rmse"]
    metrics["test/samples"] = len(actual)
    fig = plots.forecast_figure(
        arrays["t"],
        {
            "actual": actual[:, 0],
            "model": pred[:, 0],
            "persistence": persistence[:, 0],
            f"AR({lags})": ar[:, 0],
        },
        f"{title}: test forecasts (first step ahead)",
        schema.get("unit", "value"),
    )
    return Evaluation(metrics, {"baselines": baselines}, {"forecast": fig})


def regression(
    model, batches: Batches, schema: dict, title: str, train: tuple[np.ndarray, np.ndarray]
) -> Evaluation:
    """Errors in the target's units beside the better of two baselines fitted on the train
    split in the same run: a ridge regression on the inputs, and the train mean."""
    mean, std = schema["scaler"]["mean"], schema["scaler"]["std"]
    pred = predict(model, batches).cpu().numpy()[:, 0] * std + mean
    actual = batches.y.cpu().numpy()[:, 0] * std + mean
    metrics = {f"test/{k}": v for k, v in regression_errors(actual, pred).items()}
    metrics.update(rmse_interval((actual - pred) ** 2))
    train_x, train_y = train
    ridge_pred, alpha = baseline_regressor(
        train_x, train_y[:, 0] * std + mean, batches.x.cpu().numpy()
    )
    baselines = {
        "ridge": {**regression_errors(actual, ridge_pred), "alpha": alpha},
        "train_mean": regression_errors(actual, np.full_like(actual, mean)),
    }
    best = min(baselines, key=lambda name: baselines[name]["rmse"])
    metrics["test/baseline_rmse"] = baselines[best]["rmse"]
    metrics["test/rmse_ratio_baseline"] = metrics["test/rmse"] / baselines[best]["rmse"]
    metrics["test/rmse_ratio_ridge"] = metrics["test/rmse"] / baselines["ridge"]["rmse"]
    metrics["test/rmse_ratio_mean"] = metrics["test/rmse"] / baselines["train_mean"]["rmse"]
    metrics["test/samples"] = len(actual)
    fig = plots.scatter_figure(actual, pred, f"{title}: test predictions")
    details = {"baselines": baselines, "baseline": best}
    return Evaluation(metrics, details, {"predictions": fig})


def baseline_regressor(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray):
    """Predictions of scikit-learn's ridge regression on flattened inputs, its penalty chosen
    by efficient leave-one-out cross-validation on the train split; and that penalty."""
    from sklearn.linear_model import RidgeCV

    if len(train_y) > BASELINE_MAX_ROWS:
        keep = np.random.default_rng(0).choice(len(train_y), BASELINE_MAX_ROWS, replace=False)
        train_x, train_y = train_x[keep], train_y[keep]
    model = RidgeCV(alphas=np.logspace(-3, 3, 13))
    model.fit(train_x.reshape(len(train_x), -1), train_y)
    return model.predict(test_x.reshape(len(test_x), -1)), float(model.alpha_)


def language_model(model, batches: Batches, char_counts, schema: dict, title: str) -> Evaluation:
    """Perplexity per character beside a unigram baseline, and a generated sample."""
    logits = predict(model, batches)  # (N, T, V)
    targets = batches.y.flatten()
    loss = F.cross_entropy(logits.flatten(0, 1), targets).item()
    unigram = (torch.as_tensor(char_counts, dtype=torch.float64) + 1).log()
    unigram = unigram - unigram.logsumexp(0)  # add-one smoothed log-probabilities
    unigram_loss = -unigram[targets.cpu()].mean().item()
    metrics = {
        "test/loss": loss,
        "test/perplexity": float(np.exp(loss)),
        "test/bits_per_char": loss / np.log(2),
        "test/perplexity_unigram": float(np.exp(unigram_loss)),
        "test/perplexity_ratio_unigram": float(np.exp(loss - unigram_loss)),
        "test/samples": len(batches.y),
    }
    vocab = schema["vocab"]
    prompt = batches.x[0]
    generated = generate(model, prompt, 300, temperature=0.8)
    text = {
        "prompt": "".join(vocab[i] for i in prompt.tolist()),
        "generated": "".join(vocab[i] for i in generated),
    }
    fig = plots.text_figure(
        f"{text['prompt']}[...]{text['generated']}",
        f"{title}: sample (temperature 0.8) after a test prompt",
    )
    return Evaluation(metrics, {"sample": text}, {"sample": fig})


@torch.no_grad()
def generate(model, prompt: torch.Tensor, n: int, temperature: float, seed: int = 0) -> list[int]:
    """Sample n tokens after `prompt` (seeded); index 0 (unknown) is never drawn."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = prompt.tolist()
    window = len(ids)
    out = []
    for _ in range(n):
        context = torch.tensor(ids[-window:], device=prompt.device)[None]
        logits = model(context)[0, -1].float().cpu() / temperature
        logits[0] = float("-inf")
        nxt = int(torch.multinomial(logits.softmax(0), 1, generator=g))
        ids.append(nxt)
        out.append(nxt)
    return out


def regression_errors(actual: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = pred - actual
    mse = float(np.mean(err**2))
    ss_tot = float(np.sum((actual - actual.mean()) ** 2))
    return {
        "mse": mse,
        "rmse": mse**0.5,
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot else float("nan"),
    }


def ar_forecasts(train_series, inputs: np.ndarray, horizon: int) -> tuple[np.ndarray, int]:
    """Iterated forecasts of an AutoReg model (order chosen by AIC on the train part)."""
    from statsmodels.tsa.ar_model import AutoReg, ar_select_order

    maxlag = min(inputs.shape[1], len(train_series) // 4)
    lags = ar_select_order(train_series, maxlag=maxlag, ic="aic").ar_lags
    lags = max(lags) if lags else 1
    params = AutoReg(train_series, lags=lags).fit().params  # const, lag 1 .. lag p
    history = inputs[:, -lags:].astype(np.float64)
    out = np.empty((len(inputs), horizon))
    for step in range(horizon):
        nxt = params[0] + history[:, ::-1] @ params[1:]
        out[:, step] = nxt
        history = np.concatenate([history[:, 1:], nxt[:, None]], axis=1)
    return out, lags


@torch.no_grad()
def cnn_insight(model, sample: torch.Tensor, title: str) -> dict:
    """First-layer filters and the first block's feature maps of one test image."""
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    filters = first_conv.weight.detach()[:, :1].cpu()  # (C_out, 1, k, k): first input channel
    maps = model.features[0](sample[:1])[0][:, None].cpu()  # (C_out, 1, h, w)
    return {
        "filters": plots.image_grid(
            unit_range(filters).numpy(), f"{title}: first-layer filters", ncols=8
        ),
        "feature_maps": plots.image_grid(
            unit_range(maps).numpy(), f"{title}: block-1 feature maps of a test image", ncols=8
        ),
    }


def unit_range(t: torch.Tensor) -> torch.Tensor:
    """Scale each image to [0, 1] for display."""
    lo = t.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = t.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (t - lo) / (hi - lo).clamp_min(1e-8)


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


def robustness(model, batches: Batches, schema: dict, corruptions) -> dict[str, float]:
    """Test accuracy of an image classifier under each declared corruption (seeded), and its
    ratio to the clean accuracy."""
    if batches.x.dim() != 4 or not corruptions:
        return {}  # before the imports: torchvision costs seconds to import
    from torchvision.transforms.v2 import functional as TF

    from pipeline.augment import ImageScale

    scale = ImageScale(schema["normalization"])
    clean = (predict(model, batches).argmax(1) == batches.y).float().mean().item()
    g = torch.Generator(device=batches.x.device).manual_seed(0)
    out = {}
    for c in corruptions:
        unit = scale.to_unit(batches.x)
        if c.name == "gaussian_noise":
            noise = torch.randn(unit.shape, generator=g, device=unit.device)
            unit = (unit + c.severity * noise).clamp(0, 1)
        else:
            unit = TF.rotate(unit, c.severity)
        shifted = Batches(
            scale.from_unit(unit), batches.y, batches.batch_size, device=unit.device, shuffle=False
        )
        acc = (predict(model, shifted).argmax(1) == batches.y).float().mean().item()
        key = f"test/robust/{c.name}_{c.severity:g}"
        out[f"{key}/accuracy"] = acc
        out[f"{key}/accuracy_ratio_clean"] = acc / max(clean, 1e-12)
    return out
