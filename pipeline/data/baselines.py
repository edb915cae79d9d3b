"""The classical baselines every model is compared with, fitted on a dataset's train split.

A classification dataset's logistic regression and a series' autoregressive model depend on
the dataset alone, so preprocess fits them once (schema.json's `baselines`) rather than every
evaluate@ of every experiment on the dataset: that was scikit-learn's or statsmodels' import
and a fit in each of them. The regression baseline is fitted by evaluate.
"""

from __future__ import annotations

import numpy as np

# a seeded subset keeps the baseline quick and small on large datasets: at most this many
# rows, and this many bytes of inputs (1365 photos of 64x64 RGB)
BASELINE_MAX_ROWS = 5000
BASELINE_MAX_BYTES = 64 << 20


def baseline_sample(train_x, train_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most BASELINE_MAX_ROWS train rows and BASELINE_MAX_BYTES of them (a seeded
    subset), in memory."""
    rows = _block_rows(train_x)
    if len(train_y) > rows:
        keep = np.random.default_rng(0).choice(len(train_y), rows, replace=False)
        return train_x[keep], train_y[keep]
    return train_x[:], train_y


def _block_rows(x) -> int:
    """Rows of `x` a baseline takes at a time: BASELINE_MAX_ROWS, and BASELINE_MAX_BYTES."""
    row_bytes = int(np.prod(x.shape[1:])) * x.dtype.itemsize
    return min(BASELINE_MAX_ROWS, max(1, BASELINE_MAX_BYTES // row_bytes))


def blocks(x):
    """`x` (an array or rows on disk) in blocks of `_block_rows` rows."""
    step = _block_rows(x)
    return (x[i : i + step] for i in range(0, len(x), step))


def baseline_classifier(train_x, train_y: np.ndarray, test_x) -> np.ndarray:
    """Predictions of scikit-learn's logistic regression on flattened inputs (token ids
    become bag-of-token counts)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = baseline_sample(train_x, train_y)
    if np.issubdtype(train_x.dtype, np.integer):  # token ids
        vocab = max(int(train_x.max()), *(int(b.max()) for b in blocks(test_x))) + 1

    def features(x: np.ndarray) -> np.ndarray:
        if np.issubdtype(x.dtype, np.integer):
            return np.stack([np.bincount(row.ravel(), minlength=vocab) for row in x])
        return x.reshape(len(x), -1)

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(features(train_x), train_y)
    return np.concatenate([model.predict(features(b)) for b in blocks(test_x)])


def classifier_metrics(train: tuple, test: tuple, classes: list[str]) -> dict[str, float]:
    """Test metrics (accuracy, macro precision, recall and F1) of the logistic regression
    fitted on the train split: `train` and `test` are (inputs, labels), the inputs rows on
    disk (`store.inputs`)."""
    from pipeline.metrics import classification_metrics

    predicted = baseline_classifier(*train, test[0])
    summary, _, _ = classification_metrics(test[1], predicted, classes)
    return {key.split("/")[1]: value for key, value in summary.items()}


def autoregression(train_series: np.ndarray, max_lags: int) -> dict:
    """An AutoReg model of the train part of a series, its order (at most `max_lags`, and a
    quarter of the series) chosen by AIC: {"lags": p, "params": [const, lag 1 .. lag p]}."""
    from statsmodels.tsa.ar_model import AutoReg, ar_select_order

    maxlag = min(max_lags, len(train_series) // 4)
    lags = ar_select_order(train_series, maxlag=maxlag, ic="aic").ar_lags
    lags = max(lags) if lags else 1
    params = AutoReg(train_series, lags=lags).fit().params
    return {"lags": int(lags), "params": [float(v) for v in params]}


def ar_forecasts(model: dict, inputs: np.ndarray, horizon: int) -> np.ndarray:
    """Iterated `horizon`-step forecasts of the `autoregression` model from each row of
    `inputs` (the last values of each window, original units)."""
    params, lags = np.asarray(model["params"]), model["lags"]
    history = inputs[:, -lags:].astype(np.float64)
    out = np.empty((len(inputs), horizon))
    for step in range(horizon):
        nxt = params[0] + history[:, ::-1] @ params[1:]
        out[:, step] = nxt
        history = np.concatenate([history[:, 1:], nxt[:, None]], axis=1)
    return out
