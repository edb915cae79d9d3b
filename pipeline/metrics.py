"""Classification metrics: one dict of `split/metric` keys for DVC, MLflow and the report."""

from __future__ import annotations

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], split: str = "test"
) -> tuple[dict[str, float], dict[str, dict], np.ndarray]:
    """Summary metrics, per-class metrics and the confusion matrix (rows: actual)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = np.arange(len(classes))
    p, r, f, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
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
    return summary, per_class, confusion_matrix(y_true, y_pred, labels=labels)
