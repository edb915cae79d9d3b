"""Test-split evaluation of the predictive tasks, each beside a classical baseline fitted on the
train split in the same run."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from pipeline import paths, plots
from pipeline.data import datasets
from pipeline.data.baselines import ar_forecasts, baseline_sample, blocks
from pipeline.engine import Batches, predict
from pipeline.errors import PipelineError
from pipeline.evaluation.attacks import attack_accuracy
from pipeline.evaluation.base import CONFUSION_HEADER, Evaluation, Inputs
from pipeline.evaluation.images import cnn_insight, robustness
from pipeline.experiment import in_memory
from pipeline.metrics import (
    auroc,
    classification_intervals,
    classification_metrics,
    rmse_interval,
)


def stored_baseline(schema: dict, name: str) -> dict:
    """The dataset's baseline `name` that preprocess fitted (schema.json)."""
    if name not in schema.get("baselines", {}):
        raise PipelineError(
            f"{paths.schema_file(schema['dataset'])} has no {name} baseline (written by an "
            f"older version); run `dvc repro preprocess@{schema['dataset']}`"
        )
    return schema["baselines"][name]


def classification(
    model, batches: Batches, schema: dict, title: str, logits: torch.Tensor | None = None
) -> Evaluation:
    """Accuracy and F1 with bootstrap 95% intervals, beside the dataset's logistic regression
    on flattened inputs (fitted on its train split by preprocess: schema.json). `logits`: the
    model's on `batches`, when the caller has them already."""
    logits = predict(model, batches) if logits is None else logits
    y_true = batches.y.cpu().numpy()
    y_pred = logits.argmax(1).cpu().numpy()
    classes = schema["classes"]
    metrics, per_class, confusion = classification_metrics(y_true, y_pred, classes)
    metrics.update(classification_intervals(y_true, y_pred, len(classes)))
    metrics["test/loss"] = F.cross_entropy(logits, batches.y).item()
    baseline = stored_baseline(schema, "logistic_regression")
    metrics["test/baseline_accuracy"] = baseline["accuracy"]
    metrics["test/accuracy_ratio_baseline"] = metrics["test/accuracy"] / max(
        baseline["accuracy"], 1e-12
    )
    metrics["test/samples"] = len(y_true)
    rows = "".join(f"{classes[t]},{classes[p]}\n" for t, p in zip(y_true, y_pred, strict=True))
    fig = plots.confusion_figure(confusion, classes, f"{title}: test confusion matrix")
    details = {
        "per_class": per_class,
        "baselines": {"logistic_regression": baseline},
    }
    return Evaluation(metrics, details, {"confusion": fig}, CONFUSION_HEADER + rows)


def host_inputs(batches: Batches):
    """The inputs of `batches` for a baseline on the host: an array, or the rows on disk
    (a split larger than the memory budget), read a block at a time by the baselines."""
    return batches.x if batches.streamed else batches.x.cpu().numpy()


def forecasting(model, batches: Batches, arrays: dict, schema: dict, title: str) -> Evaluation:
    """Errors in original units beside naive persistence and the AR model preprocess fitted
    on the train part (schema.json)."""
    mean, std = schema["scaler"]["mean"], schema["scaler"]["std"]
    pred = predict(model, batches).cpu().numpy() * std + mean  # (N, horizon)
    actual = arrays["y"] * std + mean
    inputs = arrays["x"][:, :, 0] * std + mean  # (N, lookback), original units
    persistence = np.repeat(arrays["last_input"][:, None], actual.shape[1], axis=1)
    model_ar = stored_baseline(schema, "ar")
    ar, lags = ar_forecasts(model_ar, inputs, actual.shape[1]), model_ar["lags"]
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
        train_x, train_y[:, 0] * std + mean, host_inputs(batches)
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

    train_x, train_y = baseline_sample(train_x, train_y)
    model = RidgeCV(alphas=np.logspace(-3, 3, 13))
    model.fit(train_x.reshape(len(train_x), -1), train_y)
    pred = [model.predict(b.reshape(len(b), -1)) for b in blocks(test_x)]
    return np.concatenate(pred), float(model.alpha_)


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


def _classification(i: Inputs) -> Evaluation:
    logits = predict(i.model, i.batches)  # one pass over the test split, used twice
    result = classification(i.model, i.batches, i.schema, i.experiment, logits)
    result.metrics.update(robustness(i.model, i.batches, i.schema, i.exp.evaluate.corruptions))
    metrics, figures = attack_accuracy(
        i.model,
        i.batches,
        i.schema,
        i.exp.evaluate.attacks,
        result.metrics["test/accuracy"],
        i.experiment,
    )
    result.metrics.update(metrics)
    result.figures.update(figures)
    if i.exp.model.name == "cnn":
        result.figures.update(cnn_insight(i.model, i.batches.head(1), i.experiment))
    if len(i.schema["classes"]) == 2:
        metrics, details, figures = two_classes(i, logits)
        result.metrics.update(metrics)
        result.details.update(details)
        result.figures.update(figures)
    return result


def two_classes(i: Inputs, test_logits: torch.Tensor) -> tuple[dict[str, float], dict, dict]:
    """A two-class classifier's ranking and its operating point: ROC AUC (bootstrap 95%
    interval) and the ROC curve of p(second class) on test (from `test_logits`), and the
    decision threshold that is most accurate on the validation split, with the test
    accuracy it gives."""
    from sklearn.metrics import roc_curve

    def scores(logits: torch.Tensor) -> np.ndarray:
        return logits.float().softmax(1)[:, 1].cpu().numpy()

    # read from disk in batches when it is over the memory budget, as the test split is
    on_disk = not in_memory(i.exp, i.batches.device, ("val",))
    val_x, val_y = datasets.load_split(i.exp.dataset, "val", on_disk=on_disk)
    val = Batches(
        val_x,
        val_y,
        i.exp.evaluate.batch_size,
        device=i.batches.device,
        shuffle=False,
        workers=i.exp.data.workers(),
    )
    val_scores, test_scores = scores(predict(i.model, val)), scores(test_logits)
    y_true = i.batches.y.cpu().numpy()
    # every val score is a candidate threshold (at most 1,001 quantiles of them)
    grid = (
        np.quantile(val_scores, np.linspace(0, 1, 1001)) if len(val_scores) > 1001 else val_scores
    )
    candidates = np.unique(np.concatenate([[0.5], grid]))
    val_accuracy = [((val_scores >= t) == val_y).mean() for t in candidates]
    best = max(val_accuracy)  # ties: the threshold nearest 0.5
    threshold = min(
        (t for t, a in zip(candidates, val_accuracy, strict=True) if a == best),
        key=lambda t: abs(t - 0.5),
    )
    metrics = auroc(y_true, test_scores, "test", "roc_auc")
    metrics["test/threshold"] = float(threshold)
    metrics["test/accuracy_at_threshold"] = float(((test_scores >= threshold) == y_true).mean())
    fpr, tpr, _ = roc_curve(y_true, test_scores)
    positive = i.schema["classes"][1]
    title = f"{i.experiment}: test ROC curve (positive class {positive!r})"
    figure = plots.roc_figure(fpr, tpr, metrics["test/roc_auc"], title)
    details = {"threshold": {"value": float(threshold), "chosen_on": "val", "val_accuracy": best}}
    return metrics, details, {"roc": figure}


def _regression(i: Inputs) -> Evaluation:
    train = datasets.load_split(i.exp.dataset, "train", on_disk=True)
    return regression(i.model, i.batches, i.schema, i.experiment, train)


def _language_model(i: Inputs) -> Evaluation:
    counts = datasets.load_arrays(i.exp.dataset, "train")["char_counts"]
    return language_model(i.model, i.batches, counts, i.schema, i.experiment)


def _forecasting(i: Inputs) -> Evaluation:
    return forecasting(i.model, i.batches, i.arrays, i.schema, i.experiment)


EVALUATORS = {
    "classification": _classification,
    "regression": _regression,
    "language_model": _language_model,
    "forecasting": _forecasting,
}
