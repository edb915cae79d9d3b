"""Classification metrics: one dict of `split/metric` keys for DVC, MLflow and the report."""

from __future__ import annotations

import csv
import io

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], split: str = "test"
) -> tuple[dict[str, float], dict[str, dict], np.ndarray]:
    """Summary metrics, per-class metrics and the confusion matrix (rows: actual).

    Computed as scikit-learn's precision_recall_fscore_support(zero_division=0) does, in
    NumPy: importing scikit-learn cost each evaluate process about 1.5 s."""
    k = len(classes)
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    confusion = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(1), confusion.sum(0)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(k), where=den > 0)

    p, r = ratio(tp, predicted), ratio(tp, support)
    f = ratio(2 * tp, (support + predicted).astype(np.float64))
    summary = {
        f"{split}/accuracy": float(np.mean(y_true == y_pred)),
        f"{split}/precision_macro": float(p.mean()),
        f"{split}/recall_macro": float(r.mean()),
        f"{split}/f1_macro": float(f.mean()),
    }
    per_class = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return summary, per_class, confusion


BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: the same resamples on every run


def _resamples(n: int):
    """The bootstrap's resamples (rows of sample indices) in blocks of about 4 M indices: all
    1,000 at once would take 8 KB per test sample (528 MB for 66,000). The same draws as
    one call, as the generator's stream is read in order."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    step = max(1, (1 << 22) // n)
    for start in range(0, BOOTSTRAP_SAMPLES, step):
        yield rng.integers(0, n, size=(min(step, BOOTSTRAP_SAMPLES - start), n))


def _interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def classification_intervals(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, split: str = "test"
) -> dict[str, float]:
    """Bootstrap 95% intervals of accuracy and macro F1 (1,000 seeded resamples of the split)."""
    accuracy, f1 = [], []
    for idx in _resamples(len(y_true)):
        t, p = y_true[idx], y_pred[idx]  # (resamples, n)
        accuracy.append((t == p).mean(1))
        block = np.zeros(len(idx))
        for k in range(num_classes):
            tp = ((p == k) & (t == k)).sum(1)
            wrong = ((p == k) != (t == k)).sum(1)  # false positives + false negatives
            denom = 2 * tp + wrong
            block += np.divide(2 * tp, denom, out=np.zeros(len(idx)), where=denom > 0)
        f1.append(block / num_classes)
    accuracy, f1 = np.concatenate(accuracy), np.concatenate(f1)
    out = {}
    for name, values in (("accuracy", accuracy), ("f1_macro", f1)):
        low, high = _interval(values)
        out[f"{split}/{name}_ci95_low"], out[f"{split}/{name}_ci95_high"] = low, high
    return out


def auroc(labels: np.ndarray, scores: np.ndarray, split: str, name: str) -> dict[str, float]:
    """Area under the ROC curve of `scores` ranking the positive `labels` first, with a
    bootstrap 95% interval (resamples holding a single class are skipped)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    values = []
    for idx in _resamples(len(labels)):
        auc, valid = _rank_auc(labels[idx], scores[idx])
        values.append(auc[valid])
    low, high = _interval(np.concatenate(values))
    return {
        f"{split}/{name}": float(_rank_auc(labels[None], scores[None])[0][0]),
        f"{split}/{name}_ci95_low": low,
        f"{split}/{name}_ci95_high": high,
    }


def _rank_auc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC AUC of each row of (rows, n) `labels` (1 = positive) and `scores`, all rows at
    once: the Mann-Whitney statistic of the positives' ranks (tied scores share their mean
    rank, so a tie counts half), which is the area scikit-learn's roc_auc_score integrates
    (equal to it within 1e-12; one call per bootstrap resample took 3-5 s for 1,000).
    Also which rows hold both classes (the others have no AUC)."""
    from scipy.stats import rankdata

    positive = labels.astype(bool)
    n_pos = positive.sum(1)
    n_neg = labels.shape[1] - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    rank_sum = np.where(positive, rankdata(scores, axis=1), 0.0).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), valid


def rmse_interval(squared_errors: np.ndarray, split: str = "test") -> dict[str, float]:
    """Bootstrap 95% interval of the RMSE from per-sample squared errors."""
    per_sample = squared_errors.reshape(len(squared_errors), -1).mean(1)
    rmse = [np.sqrt(per_sample[idx].mean(1)) for idx in _resamples(len(per_sample))]
    low, high = _interval(np.concatenate(rmse))
    return {f"{split}/rmse_ci95_low": low, f"{split}/rmse_ci95_high": high}


def mean_interval(values: np.ndarray, split: str, name: str) -> dict[str, float]:
    """The mean of per-sample `values` (e.g. 1 for an exact match) with its bootstrap 95%
    interval."""
    values = np.asarray(values, dtype=np.float64)
    means = np.concatenate([values[idx].mean(1) for idx in _resamples(len(values))])
    low, high = _interval(means)
    return {
        f"{split}/{name}": float(values.mean()),
        f"{split}/{name}_ci95_low": low,
        f"{split}/{name}_ci95_high": high,
    }


def interval_half_width(metrics: dict[str, float], metric: str) -> float:
    """Half the 95% interval of `metric`, or 0 when no interval was computed for it."""
    low, high = metrics.get(f"{metric}_ci95_low"), metrics.get(f"{metric}_ci95_high")
    return 0.0 if low is None or high is None else (high - low) / 2


def curves_csv(history: list[dict]) -> str:
    """The history in long form for DVC's `curves` template (.dvc/plots/curves.json): one
    panel per quantity (loss, accuracy, ...), a line per split in it. The learning rate and
    the epoch are left out as quantities."""
    rows = []
    for row in history:
        for key, value in row.items():
            split, _, panel = key.partition("/")
            if panel and value is not None:
                rows.append({"epoch": row["epoch"], "panel": panel, "series": split})
                rows[-1]["value"] = value
    return history_csv(rows) if rows else "epoch,panel,series,value\n"


def headline(metrics: dict[str, float], main: str, ratio: str) -> dict[str, float]:
    """What metrics.json, DVC's metric file, holds: the main metric, its 95% interval and its
    ratio to the baseline. `dvc exp show` gets a column per key of every experiment's file, so
    every test metric there made hundreds; details.json has them all."""
    keys = (main, f"{main}_ci95_low", f"{main}_ci95_high", ratio)
    return {k: metrics[k] for k in keys if k in metrics}


def with_interval(metrics: dict[str, float], metric: str) -> str:
    """`metric`'s value and, when evaluate computed one, its bootstrap 95% interval."""
    low, high = metrics.get(f"{metric}_ci95_low"), metrics.get(f"{metric}_ci95_high")
    return f"{metrics[metric]:.4f}" + ("" if low is None else f" [{low:.4f}, {high:.4f}]")


def history_csv(history: list[dict]) -> str:
    """Rows of dicts as CSV; the columns are every key, in first-seen order."""
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in history for k in row))
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()
