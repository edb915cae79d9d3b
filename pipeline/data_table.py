"""The `table` source: a CSV or Parquet file with a target column (churn, house prices, ...).

Ingest copies the file (validated) to data/raw/<name>/table.parquet. Preprocess splits it
(stratified for classification, group-aware when `group` is set), applies the NaN policy,
one-hot encodes categorical columns and standardises numeric ones with train statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import atomic, paths
from pipeline.errors import PipelineError

RAW_TABLE = "table.parquet"
READERS = {".csv": "read_csv", ".parquet": "read_parquet", ".pq": "read_parquet"}
MAX_CLASSES = 20  # an integer target with at most this many values is a class label


def ingest(name: str, cfg, columns: list[str] | None = None) -> Path:
    """Copy the file at `cfg.path` to data/raw/<name>/table.parquet after checking that it
    reads, has rows and holds `columns` (default: the table's target, features and group)."""
    import pandas as pd

    path = Path(cfg.path)
    where = f"datasets.{name}.path"
    if not path.is_file():
        raise PipelineError(f"{where}: {path} not found (looked in {path.resolve().parent})")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise PipelineError(
            f"{where}: {path.suffix!r} files are not supported; use .csv or .parquet"
        )
    try:
        frame = getattr(pd, reader)(path)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise PipelineError(f"{where}: cannot read {path}: {err}") from None
    if frame.empty:
        raise PipelineError(f"{where}: {path} has no rows")
    if columns is None:
        columns = [cfg.target, *(cfg.features or ()), *([cfg.group] if cfg.group else [])]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PipelineError(
            f"datasets.{name}: column(s) {', '.join(map(repr, missing))} not in {path}; "
            f"columns: {', '.join(map(str, frame.columns))}"
        )
    with atomic.atomic_dir(paths.raw_dir(name)) as tmp:
        frame.to_parquet(tmp / RAW_TABLE, index=False)
        meta = {"source": cfg.source, "path": str(path), "samples": len(frame)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return paths.raw_dir(name)


def preprocess(name: str, cfg):
    """-> (splits {split: {x, y}}, schema) for data.py to write."""
    import pandas as pd

    frame = pd.read_parquet(paths.raw_dir(name) / RAW_TABLE)
    features = list(cfg.features or [c for c in frame.columns if c not in (cfg.target, cfg.group)])
    frame = apply_nan_policy(name, frame, [*features, cfg.target], cfg.nan)
    task = infer_task(frame[cfg.target]) if cfg.task == "auto" else cfg.task
    target = frame[cfg.target]
    classes = sorted(target.astype(str).unique()) if task == "classification" else []
    y = (
        target.astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
        if classes
        else target.to_numpy(np.float32)
    )
    splits = split_rows(name, cfg, y, frame[cfg.group] if cfg.group else None, classes)
    train = frame.iloc[splits["train"]]
    encoder = fit_encoder(train, features, cfg.normalize)
    if cfg.nan in ("impute_mean", "impute_median"):
        fill = getattr(train[encoder["numeric"]], cfg.nan.removeprefix("impute_"))()
        frame = frame.fillna(fill)  # statistics of the train split only
    x = encode(frame, encoder)
    scaler = {"mean": 0.0, "std": 1.0}
    if not classes:  # regression: the target is scaled with train statistics too
        scaler = {
            "mean": float(y[splits["train"]].mean()),
            "std": float(y[splits["train"]].std() or 1),
        }
        y = ((y - scaler["mean"]) / scaler["std"]).astype(np.float32)[:, None]
    out = {s: {"x": x[i], "y": y[i]} for s, i in splits.items()}
    schema = {
        "dataset": name,
        "source": "table",
        "task": task,
        "input_shape": [x.shape[1]],
        "features": encoder["columns"],
        "counts": {s: len(i) for s, i in splits.items()},
        "encoding": {k: v for k, v in encoder.items() if k != "columns"},
        "nan_policy": cfg.nan,
    }
    if classes:
        schema.update(
            classes=classes,
            num_classes=len(classes),
            class_counts={
                s: np.bincount(y[i], minlength=len(classes)).tolist() for s, i in splits.items()
            },
        )
    else:
        schema.update(horizon=1, scaler={**scaler, "fitted_on": "train"})
    return out, schema


def infer_task(target) -> str:
    import pandas as pd

    if pd.api.types.is_float_dtype(target) and not target.dropna().apply(float.is_integer).all():
        return "regression"
    if pd.api.types.is_numeric_dtype(target) and target.nunique() > MAX_CLASSES:
        return "regression"
    return "classification"


def apply_nan_policy(name: str, frame, columns: list[str], policy: str):
    """Report NaN/inf per column; fail, drop rows, or leave them for train-fitted imputation."""
    numeric = frame[columns].select_dtypes("number")
    bad = numeric.isna() | np.isinf(numeric)
    bad = bad.join(frame[columns].select_dtypes(exclude="number").isna())
    counts = bad.sum()
    counts = counts[counts > 0]
    if counts.empty:
        return frame
    report = ", ".join(f"{col!r}: {n}" for col, n in counts.items())
    if policy == "fail":
        raise PipelineError(
            f"datasets.{name}: missing or infinite values per column ({report}); set "
            f"datasets.{name}.nan to drop, impute_mean or impute_median"
        )
    if policy == "drop":
        kept = frame[~bad.any(axis=1)].reset_index(drop=True)
        if kept.empty:
            raise PipelineError(f"datasets.{name}: no rows left after dropping NaN ({report})")
        return kept
    target = columns[-1]
    if target in counts:
        raise PipelineError(
            f"datasets.{name}: target {target!r} has {counts[target]} missing "
            "values; imputing a target is not allowed: use nan: drop"
        )
    return frame.replace([np.inf, -np.inf], np.nan)


def split_rows(name: str, cfg, y, groups, classes) -> dict[str, np.ndarray]:
    from sklearn.model_selection import GroupShuffleSplit

    from pipeline.data import stratified_split

    n = len(groups) if groups is not None else len(y)
    if groups is not None:  # no group in two splits
        idx = np.arange(n)
        outer = GroupShuffleSplit(1, test_size=cfg.split.test, random_state=cfg.split.seed)
        rest, test = next(outer.split(idx, groups=groups))
        inner = GroupShuffleSplit(
            1, test_size=cfg.split.val / (1 - cfg.split.test), random_state=cfg.split.seed
        )
        train, val = next(inner.split(rest, groups=groups.iloc[rest]))
        splits = {"train": rest[train], "val": rest[val], "test": test}
    elif classes:
        splits = stratified_split(y, cfg.split.val, cfg.split.test, cfg.split.seed, classes, name)
    else:  # regression: a seeded random split
        order = np.random.default_rng(cfg.split.seed).permutation(n)
        n_test, n_val = round(n * cfg.split.test), round(n * cfg.split.val)
        splits = {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
    for split, idx in splits.items():
        if len(idx) == 0:
            raise PipelineError(f"datasets.{name}: the {split} split is empty ({n} rows)")
    return {s: np.sort(i) for s, i in splits.items()}


def fit_encoder(train, features: list[str], normalize: bool) -> dict:
    """Numeric columns: train mean/std; categorical: one-hot over the train categories."""
    import pandas as pd

    numeric = [c for c in features if pd.api.types.is_numeric_dtype(train[c])]
    categorical = {c: sorted(train[c].astype(str).unique()) for c in features if c not in numeric}
    stats = {
        c: (float(train[c].mean()), float(train[c].std() or 1.0)) if normalize else (0.0, 1.0)
        for c in numeric
    }
    columns = numeric + [f"{c}={v}" for c, values in categorical.items() for v in values]
    return {"numeric": numeric, "stats": stats, "categorical": categorical, "columns": columns}


def encode(frame, encoder: dict) -> np.ndarray:
    parts = [
        ((frame[c].to_numpy(np.float64) - m) / s)[:, None] for c, (m, s) in encoder["stats"].items()
    ]
    for col, values in encoder["categorical"].items():
        as_text = frame[col].astype(str).to_numpy()
        parts.append(np.stack([as_text == v for v in values], axis=1))  # unseen: all zero
    return np.concatenate(parts, axis=1).astype(np.float32)
