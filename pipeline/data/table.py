"""The `table` source: a CSV or Parquet file with a target column (churn, house prices, ...).

Ingest copies the file (validated) to data/raw/<name>/table.parquet. Preprocess splits it
(stratified for classification, group-aware when `group` is set), applies the NaN policy and
fits `preprocessing.TablePreprocessor` on the train rows (one-hot categorical columns,
standardised numeric ones, imputation), which writes the splits and travels with the model.

Both stream: the file is read in batches of rows and the splits are written batch by batch,
so memory grows with the row count (labels, NaN flags, split indices: about 100 bytes a row)
rather than with the file's cells.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import atomic, paths
from pipeline.data import preprocessing
from pipeline.errors import PipelineError

READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_CLASSES = 20  # an integer target with at most this many values is a class label
BATCH_ROWS = 65_536  # rows per streamed batch
# CSV bytes per block. Arrow reads some 30 blocks ahead, so this sets the reader's memory (about
# 40 MB); column types are inferred from the first block
CSV_BLOCK_BYTES = 1 << 20


def open_batches(path: Path):
    """(Arrow schema, iterator of record batches) of a CSV or Parquet file. Empty CSV cells
    and the usual NA spellings are nulls, as pandas reads them."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if READERS[path.suffix.lower()] == "csv":
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
        return reader.schema, iter(reader)
    table = pq.ParquetFile(path)
    return table.schema_arrow, table.iter_batches(batch_size=BATCH_ROWS)


def ingest(name: str, cfg, columns: list[str] | None = None) -> Path:
    """Copy the file at `cfg.path` to data/raw/<name>/table.parquet after checking that it
    reads, has rows and holds `columns` (default: the table's target, features and group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(cfg.path)
    where = f"datasets.{name}.path"
    if not path.is_file():
        raise PipelineError(f"{where}: {path} not found (looked in {path.resolve().parent})")
    if path.suffix.lower() not in READERS:
        raise PipelineError(
            f"{where}: {path.suffix!r} files are not supported; use .csv or .parquet"
        )
    try:
        schema, batches = open_batches(path)
        # pandas may store its index as a column; it is not data
        names = [n for n in schema.names if not n.startswith("__index_level_")]
        if columns is None:
            columns = [cfg.target, *(cfg.features or ()), *([cfg.group] if cfg.group else [])]
        missing = [c for c in columns if c not in names]
        if missing:
            raise PipelineError(
                f"datasets.{name}: column(s) {', '.join(map(repr, missing))} not in {path}; "
                f"columns: {', '.join(names)}"
            )
        with atomic.atomic_dir(paths.raw_dir(name)) as tmp:
            rows, pending = 0, []
            out = pa.schema([schema.field(n) for n in names])
            with pq.ParquetWriter(tmp / paths.raw_table_file(name).name, out) as writer:
                for batch in batches:  # row groups of about BATCH_ROWS rows
                    pending.append(batch.select(names))
                    rows += batch.num_rows
                    if sum(b.num_rows for b in pending) >= BATCH_ROWS:
                        writer.write_table(pa.Table.from_batches(pending, out))
                        pending = []
                if pending:
                    writer.write_table(pa.Table.from_batches(pending, out))
            if rows == 0:
                raise PipelineError(f"{where}: {path} has no rows")
            meta = {"source": cfg.source, "path": str(path), "samples": rows}
            (tmp / paths.raw_meta_file(name).name).write_text(json.dumps(meta, indent=2) + "\n")
    except (pa.ArrowException, OSError) as err:
        first = str(err).strip().splitlines()[0]
        raise PipelineError(f"{where}: cannot read {path}: {first}") from None
    return paths.raw_dir(name)


def ingest_bundled(name: str, cfg) -> Path:
    """One of scikit-learn's bundled tables as data/raw/<name>/table.parquet: its feature
    columns and `target` (class names for the classification tables)."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{cfg.name}")(as_frame=True)
    frame = bunch.frame
    if "target_names" in bunch:  # classes by name, as a user's CSV would hold them
        frame["target"] = np.asarray(bunch.target_names)[frame["target"].to_numpy()]
    if cfg.target not in frame.columns:
        raise PipelineError(
            f"datasets.{name}.target: {cfg.target!r} is not a column of scikit-learn's "
            f"{cfg.name}; columns: {', '.join(frame.columns)}"
        )
    return write_raw(name, frame, {"source": cfg.source, "name": cfg.name})


def write_raw(name: str, frame, meta: dict) -> Path:
    """A table a source built itself (bundled or generated data) as data/raw/<name>/: the
    table.parquet and meta.json a user's file gets from `ingest`."""
    with atomic.atomic_dir(paths.raw_dir(name)) as tmp:
        frame.to_parquet(tmp / paths.raw_table_file(name).name, index=False)
        meta = {**meta, "samples": len(frame)}
        (tmp / paths.raw_meta_file(name).name).write_text(json.dumps(meta, indent=2) + "\n")
    return paths.raw_dir(name)


def frames(table, columns: list[str]):
    """The raw table's `columns` as pandas frames of BATCH_ROWS rows, in file order. One
    thread: with threads Arrow decodes row groups ahead and holds the whole file."""
    for batch in table.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False):
        yield batch.to_pandas()


def kept_frames(table, columns: list[str], keep: np.ndarray, labels: np.ndarray):
    """Batches of the kept rows (`keep`: a flag per raw row), each with its rows' `labels`
    (one per kept row)."""
    raw = kept = 0
    for frame in frames(table, columns):
        rows = keep[raw : raw + len(frame)]
        raw += len(frame)
        frame = frame[rows].reset_index(drop=True)
        yield frame, labels[kept : kept + len(frame)]
        kept += len(frame)


def preprocess(name: str, cfg) -> Path:
    """Split, clean, encode and write data/processed/<name> in three streamed passes: (1) the
    NaN report, target and group of every row; (2) train statistics; (3) encode and write."""
    import pandas as pd
    import pyarrow.parquet as pq

    from pipeline.data.splits import require_two_classes
    from pipeline.data.store import SplitWriter, write_schema

    table = pq.ParquetFile(paths.raw_table_file(name), pre_buffer=False)
    names = table.schema_arrow.names
    features = list(cfg.features or [c for c in names if c not in (cfg.target, cfg.group)])
    checked = [*features, cfg.target]
    read = list(dict.fromkeys([*checked, *([cfg.group] if cfg.group else [])]))

    counts, bad_rows, targets, groups = None, [], [], []
    for frame in frames(table, read):
        bad = bad_cells(frame, checked)
        counts = bad.sum() if counts is None else counts + bad.sum()
        bad_rows.append(bad.any(axis=1).to_numpy())
        targets.append(compact(frame[cfg.target]))
        if cfg.group:
            groups.append(compact(frame[cfg.group]))
    bad_rows = np.concatenate(bad_rows)
    empty = [c for c in features if counts[c] == len(bad_rows)]
    if empty:
        raise PipelineError(
            f"datasets.{name}: feature column(s) {', '.join(map(repr, empty))} hold no value in "
            f"any of the {len(bad_rows)} rows; "
            + (
                f"leave them out of datasets.{name}.features"
                if cfg.features
                else f"list the columns to learn from in datasets.{name}.features"
            )
        )
    keep = apply_nan_policy(name, counts, bad_rows, cfg.nan, cfg.target)
    target = concat(targets)[keep].reset_index(drop=True)
    group = concat(groups)[keep].reset_index(drop=True) if groups else None

    task = infer_task(target) if cfg.task == "auto" else cfg.task
    if task == "classification":
        classes, y = class_codes(target)
        require_two_classes(name, classes, np.bincount(y, minlength=len(classes)))
    else:
        classes, y = [], target.to_numpy(np.float32)
        if len(y) and y.min() == y.max():
            raise PipelineError(
                f"datasets.{name}: target {cfg.target!r} is constant ({y[0]:g} in all "
                f"{len(y)} rows); there is nothing to learn: choose another target column"
            )
    if group is not None and isinstance(group.dtype, pd.CategoricalDtype):
        group = pd.Series(group.cat.codes)  # the same grouping, without the labels
    splits = split_rows(name, cfg, y, group, classes)
    split_of = np.empty(len(y), dtype=np.int8)  # each kept row's split, by number
    for number, idx in enumerate(splits.values()):
        split_of[idx] = number

    train = split_of == list(splits).index("train")
    if classes:
        target = {"classes": classes}
    else:  # regression: the target is scaled with train statistics too
        target = {
            "mean": float(y[splits["train"]].mean()),
            "std": float(y[splits["train"]].std() or 1),
            "horizon": 1,
        }
    with_gaps = {col for col, n in counts.items() if n > 0}
    prep = fit(table, features, keep, train, cfg, target, with_gaps)
    if not classes:
        y = prep.scale_target(y)[:, None]

    schema = {
        "dataset": name,
        "source": cfg.source,
        "task": task,
        "input_shape": [len(prep.columns)],
        "features": prep.columns,
        "counts": {s: len(i) for s, i in splits.items()},
        "encoding": {"numeric": prep.numeric, "stats": prep.stats, "categorical": prep.categorical},
        "nan_policy": cfg.nan,
        "missing_values": {col: int(n) for col, n in counts.items() if n > 0},
        "rows_dropped": int((~keep).sum()),
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
        schema.update(
            horizon=1, scaler={"mean": target["mean"], "std": target["std"], "fitted_on": "train"}
        )

    width = (len(prep.columns),)
    raw_rows = np.flatnonzero(keep)  # each kept row's row number in the raw table
    with atomic.atomic_dir(paths.processed_dir(name)) as tmp:
        writers = {s: SplitWriter(tmp, s, len(idx), width) for s, idx in splits.items()}
        for frame, owner in kept_frames(table, features, keep, split_of):
            x = prep.transform(frame)
            for number, writer in enumerate(writers.values()):
                writer.write(x[owner == number])
        for split, writer in writers.items():
            writer.close(y[splits[split]], index=raw_rows[splits[split]])
        write_schema(tmp, name, schema)
        prep.save(tmp / paths.preprocessor_file(name).name)
    return paths.processed_dir(name)


def compact(column):
    """Text columns as categoricals: a code per row instead of a Python string per row."""
    import pandas as pd

    text = column.dtype == object or pd.api.types.is_string_dtype(column.dtype)
    return column.astype("category") if text else column


def concat(columns: list):
    import pandas as pd
    from pandas.api.types import union_categoricals

    if isinstance(columns[0].dtype, pd.CategoricalDtype):
        return pd.Series(union_categoricals(columns))
    return pd.concat(columns, ignore_index=True)


def class_codes(target) -> tuple[list[str], np.ndarray]:
    """Class names (the target's values as text, sorted) and each row's class index."""
    import pandas as pd

    if isinstance(target.dtype, pd.CategoricalDtype):
        target = target.cat.remove_unused_categories()
        names, codes = [str(c) for c in target.cat.categories], target.cat.codes.to_numpy()
    else:
        values, codes = np.unique(target.to_numpy(), return_inverse=True)
        names = [str(v) for v in values]
    classes = sorted(names)
    lookup = np.array([classes.index(n) for n in names], dtype=np.int64)
    return classes, lookup[codes]


def infer_task(target) -> str:
    import pandas as pd

    if pd.api.types.is_float_dtype(target) and not target.dropna().apply(float.is_integer).all():
        return "regression"
    if pd.api.types.is_numeric_dtype(target) and target.nunique() > MAX_CLASSES:
        return "regression"
    return "classification"


def bad_cells(frame, columns: list[str]):
    """Per cell of `columns`: missing, or infinite when numeric."""
    numeric = frame[columns].select_dtypes("number")
    bad = numeric.isna() | np.isinf(numeric)
    return bad.join(frame[columns].select_dtypes(exclude="number").isna())


def apply_nan_policy(name: str, counts, bad_rows: np.ndarray, policy: str, target: str):
    """The rows to keep, given the NaN/inf count per column and the rows holding any: fail,
    drop those rows, or keep them for train-fitted imputation."""
    counts = counts[counts > 0]
    keep = np.ones(len(bad_rows), dtype=bool)
    if counts.empty:
        return keep
    report = ", ".join(f"{col!r}: {n}" for col, n in counts.items())
    if policy == "fail":
        raise PipelineError(
            f"datasets.{name}: missing or infinite values per column ({report}); set "
            f"datasets.{name}.nan to drop, impute_mean or impute_median"
        )
    if policy == "drop":
        if bad_rows.all():
            raise PipelineError(f"datasets.{name}: no rows left after dropping NaN ({report})")
        return ~bad_rows
    if target in counts:
        raise PipelineError(
            f"datasets.{name}: target {target!r} has {counts[target]} missing "
            "values; imputing a target is not allowed: use nan: drop"
        )
    return keep


def split_rows(name: str, cfg, y, groups, classes) -> dict[str, np.ndarray]:
    from sklearn.model_selection import GroupShuffleSplit

    from pipeline.data.splits import stratified_split

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


def fit(table, features: list[str], keep, train, cfg, target: dict, with_gaps: set[str]):
    """The table's preprocessing, fitted on the train rows: numeric columns' train mean and
    std (missing values skipped, as pandas does); categorical ones' train categories (one-hot);
    the fill values of an imputing NaN policy (train means or medians). Streamed.
    `with_gaps`: the columns with missing values; they take floats from callers."""
    import pandas as pd

    numeric = [c for c in features if pd.api.types.is_numeric_dtype(table_dtype(table, c))]
    n, mean, m2 = (np.zeros(len(numeric)) for _ in range(3))
    levels: dict[str, set] = {c: set() for c in features if c not in numeric}
    example = []  # the first raw train rows, as MLflow's input example
    for frame, in_train in kept_frames(table, features, keep, train):
        frame = frame[in_train]
        if len(example) < 5:
            rows = frame.head(5 - len(example)).astype(object)
            example += rows.where(rows.notna(), None).to_dict("records")
        values = frame[numeric].to_numpy(np.float64, copy=True)  # may be Arrow's read-only memory
        values[~np.isfinite(values)] = np.nan
        count = (~np.isnan(values)).sum(0)
        batch_mean = np.nansum(values, 0) / np.maximum(count, 1)
        batch_m2 = np.nansum((values - batch_mean) ** 2, 0)
        total = n + count
        delta = batch_mean - mean  # Chan et al.: merge the batch's mean and squared deviations
        mean = mean + delta * count / np.maximum(total, 1)
        m2 = m2 + batch_m2 + delta**2 * n * count / np.maximum(total, 1)
        n = total
        for col in levels:
            levels[col].update(frame[col].dropna().astype(str).unique())  # missing: all 0
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(m2 / (n - 1))  # ddof=1, as pandas
    stats = {
        c: (float(mean[i]), float(std[i]) or 1.0) if cfg.normalize else (0.0, 1.0)
        for i, c in enumerate(numeric)
    }
    categorical = {c: sorted(values) for c, values in levels.items()}
    fill = None
    if cfg.nan == "impute_mean":
        fill = {c: float(mean[i]) for i, c in enumerate(numeric)}
    elif cfg.nan == "impute_median":
        fill = {c: train_median(table, c, keep, train) for c in numeric}
    types = {c: raw_type(table_dtype(table, c), c in with_gaps) for c in numeric}
    return preprocessing.TablePreprocessor(
        target, numeric, stats, categorical, fill, cfg.nan, _json_ready(example), types
    )


def raw_type(dtype, with_gaps: bool) -> str:
    """The MLflow column type callers pass a numeric column as: what pandas reads the file's
    column as (whole numbers stay int64 unless the column has gaps)."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        return "boolean"
    return "long" if kind in "iu" and not with_gaps else "double"


def _json_ready(records: list[dict]) -> list[dict]:
    """numpy scalars as Python numbers; infinite values as missing."""
    out = []
    for record in records:
        row = {}
        for key, value in record.items():
            value = value.item() if isinstance(value, np.generic) else value
            row[key] = None if isinstance(value, float) and not np.isfinite(value) else value
        out.append(row)
    return out


def table_dtype(table, column: str):
    """The pandas dtype a column of the raw table converts to."""
    return table.schema_arrow.field(column).type.to_pandas_dtype()


def train_median(table, column: str, keep, train) -> float:
    """The median of one column over the train rows (that column alone is read whole)."""
    values = table.read(columns=[column]).column(0).to_pandas().to_numpy(np.float64)
    values = values[keep][train]
    return float(np.nanmedian(np.where(np.isfinite(values), values, np.nan)))
