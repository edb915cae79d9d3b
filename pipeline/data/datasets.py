"""Data sources and preprocessing: raw arrays -> seeded splits normalised with train statistics.

Files are .npy (read with allow_pickle=False) plus JSON, so this module needs no torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline import atomic, paths
from pipeline.data import baselines, preprocessing, seq2seq, store, table, text, vision
from pipeline.data.splits import keep_fraction, stratified_split
from pipeline.errors import PipelineError
from pipeline.params.datasets import DatasetParams
from pipeline.params.training import DataParams


def ingest(name: str, cfg: DatasetParams) -> Path:
    """Fetch the source into data/raw/<name>/ (an .npy file per array + meta.json)."""
    if cfg.source == "table":
        return table.ingest(name, cfg)
    if cfg.source == "sklearn_table":
        return table.ingest_bundled(name, cfg)
    if cfg.source in ("text", "cldr_names"):
        return text.ingest(name, cfg)
    if cfg.source in ("dates", "seq2seq"):
        return seq2seq.ingest(name, cfg)
    with atomic.atomic_dir(paths.raw_dir(name)) as tmp:
        if cfg.source == "image_folder":
            meta = vision.ingest_folder(name, cfg, tmp)  # streams into tmp
        else:
            if cfg.source in vision.SOURCES:
                x, y, meta = vision.load(name, cfg)
            else:
                x, y, meta = _load_source(cfg)
            extra = {"test_mask": meta.pop("test_mask")} if "test_mask" in meta else {}
            meta["samples"] = len(x)
            store.write_arrays(tmp, {"x": x, "y": y, **extra})
        (tmp / paths.raw_meta_file(name).name).write_text(json.dumps(meta, indent=2) + "\n")
    return paths.raw_dir(name)


# statsmodels dataset -> (time column, value column, unit)
SERIES = {
    "sunspots": ("YEAR", "SUNACTIVITY", "yearly sunspot activity"),
    "nile": ("year", "volume", "Nile flow, 1e8 m^3 per year"),
}


def _load_source(cfg: DatasetParams) -> tuple[np.ndarray, np.ndarray, dict]:
    """(x, y, meta): images and labels; for a series x = values and y = timestamps; for text
    x = the code points of the corpus and y is empty."""
    if cfg.source == "python_docstrings":
        text = docstring_corpus(cfg.modules)[: cfg.max_chars]
        meta = {"source": cfg.source, "task": "language_model", "modules": list(cfg.modules)}
        return np.array([ord(c) for c in text], np.int32), np.zeros(0, np.int64), meta
    if cfg.source == "statsmodels":
        import statsmodels.datasets  # 0.8 s to import; statsmodels.api is 2.4 s

        time_col, value_col, unit = SERIES[cfg.name]
        frame = getattr(statsmodels.datasets, cfg.name).load_pandas().data
        values = frame[value_col].to_numpy(np.float32)
        if not np.isfinite(values).all():
            raise PipelineError(f"statsmodels dataset {cfg.name!r} has missing values")
        meta = {
            "source": cfg.source,
            "name": cfg.name,
            "task": "forecasting",
            "unit": unit,
            "time": time_col,
        }
        return values, frame[time_col].to_numpy(np.float64), meta
    if cfg.source == "sklearn_digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.images.astype(np.uint8)[:, None, :, :]  # (N, 1, 8, 8), values 0..16
        y = digits.target.astype(np.int64)
        meta = {
            "source": cfg.source,
            "task": "classification",
            "classes": [str(c) for c in digits.target_names],
            "value_range": [0.0, 16.0],
        }
        return x, y, meta
    raise PipelineError(f"source {cfg.source!r} has no loader")  # the schema prevents this


def docstring_corpus(modules) -> str:
    """The docstrings of the modules and of their public classes, functions and methods."""
    import importlib
    import inspect

    docs = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise PipelineError(f"modules: cannot import {module_name!r}") from None
        seen = [module]
        for _, member in inspect.getmembers(module):
            if getattr(member, "__module__", None) == module_name:
                seen.append(member)
                if inspect.isclass(member):
                    seen += [m for k, m in vars(member).items() if not k.startswith("_")]
        docs += [doc for obj in seen if (doc := inspect.getdoc(obj))]
    return "\n\n".join(dict.fromkeys(docs))  # each docstring once, in a stable order


def preprocess(name: str, cfg: DatasetParams) -> Path:
    """Split data/raw/<name>, scale with train statistics only, write splits + schema.json."""
    if cfg.source == "statsmodels":
        return _preprocess_series(name, cfg)
    if cfg.source == "python_docstrings":
        return _preprocess_text(name, cfg)
    if cfg.source in ("table", "sklearn_table"):
        return table.preprocess(name, cfg)  # streams: writes the splits itself
    if cfg.source in ("dates", "seq2seq"):
        return seq2seq.preprocess(name, cfg)
    if cfg.source in ("text", "cldr_names"):
        splits, schema, prep = text.preprocess(name, cfg)
        store.write_processed(name, splits, schema, prep)
        return paths.processed_dir(name)
    return _preprocess_images(name, cfg)


BLOCK_BYTES = 8 << 20  # raw pixels read and written at a time


def _preprocess_images(name: str, cfg) -> Path:
    """Split the ingested images (stratified, or the source's official test set), fit the
    normalisation on the train split, and write each split block by block: memory holds the
    labels and a block of images, not the dataset. The pixels are written as ingested
    (uint8: a quarter of the bytes of float32, on disk and in DVC's cache); reading a split
    applies the normalisation (`store.inputs`)."""
    from pipeline.data.arrays import NpyRows

    meta = raw_meta(name)
    _require(paths.raw_array_file(name, "x"), f"ingest@{name}")
    raw = NpyRows(paths.raw_array_file(name, "x"))
    if raw.dtype != np.uint8:
        raise PipelineError(
            f"{paths.raw_array_file(name, 'x')}: images of {raw.dtype}, not 8-bit pixels "
            f"(uint8); run `dvc repro ingest@{name}` again"
        )
    y = np.load(paths.raw_array_file(name, "y"), allow_pickle=False)
    mask_file = paths.raw_array_file(name, "test_mask")
    if not mask_file.is_file():
        splits = stratified_split(
            y, cfg.split.val, cfg.split.test, cfg.split.seed, meta["classes"], name
        )
    else:  # the dataset's official test set; val is drawn from its train part
        from sklearn.model_selection import train_test_split

        test_mask = np.load(mask_file, allow_pickle=False)
        rest = np.flatnonzero(~test_mask)
        train, val = train_test_split(
            rest, test_size=cfg.split.val, stratify=y[rest], random_state=cfg.split.seed
        )
        splits = {"train": np.sort(train), "val": np.sort(val), "test": np.flatnonzero(test_mask)}
    splits["train"] = keep_fraction(splits["train"], y, cfg.split.train_fraction, cfg.split.seed)
    whole = cfg.split.train_fraction == 1
    step = max(1, BLOCK_BYTES // raw.row_bytes)  # images a block
    blocks = [splits["train"][i : i + step] for i in range(0, len(splits["train"]), step)]
    prep = preprocessing.ImagePreprocessor.fit(
        (raw.take(block) for block in blocks),
        meta["value_range"],
        cfg.normalize,
        {"classes": meta["classes"]},
        size=getattr(cfg, "size", None),
    )
    n_classes = len(meta["classes"])
    schema = {
        "dataset": name,
        "source": meta["source"],
        "task": meta["task"],
        "input_shape": list(raw.shape[1:]),
        "classes": meta["classes"],
        "num_classes": n_classes,
        "counts": {s: int(len(i)) for s, i in splits.items()},
        "class_counts": {
            s: np.bincount(y[i], minlength=n_classes).tolist() for s, i in splits.items()
        },
        "value_range": list(meta["value_range"]),  # raw pixel values; divided by its top
        "normalization": {
            "mean": prep.mean.tolist(),
            "std": prep.std.tolist(),
            "fitted_on": "train",
        },
        # the whole train split leaves the schema (and what depends on it) as it was
        "split": cfg.split.model_dump(exclude={"train_fraction"} if whole else None),
    }
    if "skipped_unreadable" in meta:  # image folders
        schema["skipped_unreadable"] = meta["skipped_unreadable"]
    with atomic.atomic_dir(paths.processed_dir(name)) as tmp:
        for split, index in splits.items():
            writer = store.SplitWriter(tmp, split, len(index), raw.shape[1:], np.uint8)
            for start in range(0, len(index), step):
                writer.write(raw.take(index[start : start + step]))
            # `index`: each sample's row in data/raw/<name>, to find a split in the raw data
            writer.close(y[index], index=index)
        prep.save(tmp / paths.preprocessor_file(name).name)  # before the baseline reads x
        store.write_schema(tmp, name, schema)
    return paths.processed_dir(name)


def _preprocess_series(name: str, cfg) -> Path:
    """Sliding windows, split by time (a window belongs to the part holding all its targets).

    The scaler is fitted on the train part only; inputs of a val/test window may reach back
    into earlier parts, which is the past and so no leak.
    """
    values, times, meta = read_raw(name)
    n = len(values)
    n_test, n_val = round(n * cfg.split.test), round(n * cfg.split.val)
    train_end, val_end = n - n_test - n_val, n - n_test
    mean, std = float(values[:train_end].mean()), float(values[:train_end].std() or 1.0)
    lookback, horizon = cfg.lookback, cfg.horizon
    windows = values[np.arange(lookback)[None, :] + np.arange(n - lookback + 1)[:, None]]
    prep = preprocessing.SeriesPreprocessor(
        {"mean": mean, "std": std, "horizon": horizon},
        lookback,
        example=windows[-3:].tolist(),  # the last windows of the series, for MLflow's example
    )
    scaled = prep.scale_target(values)
    parts = {"train": (lookback, train_end), "val": (train_end, val_end), "test": (val_end, n)}
    splits = {}
    for split, (lo, hi) in parts.items():
        starts = np.arange(max(lo, lookback), hi - horizon + 1)  # index of the first target
        if len(starts) == 0:
            raise PipelineError(
                f"datasets.{name}: the {split} part ({hi - lo} steps) is too short for "
                f"lookback={lookback} + horizon={horizon}; lower them or enlarge split.{split}"
            )
        splits[split] = {
            "x": prep.transform(windows[starts - lookback]),
            "y": np.stack([scaled[s : s + horizon] for s in starts]),
            "t": times[starts],
            "last_input": values[starts - 1],  # for the persistence baseline, original units
            "index": starts,  # the first target's position in the raw series
        }
    schema = {
        "dataset": name,
        "source": meta["source"],
        "series": meta["name"],
        "unit": meta["unit"],
        "task": "forecasting",
        "input_shape": [lookback, 1],
        "horizon": horizon,
        "counts": {s: len(a["y"]) for s, a in splits.items()},
        "time_range": {s: [float(a["t"][0]), float(a["t"][-1])] for s, a in splits.items()},
        "scaler": {"mean": mean, "std": std, "fitted_on": "train", "train_steps": train_end},
        "split": cfg.split.model_dump(),
        # evaluate's classical baseline, fitted once here (see baselines.py)
        "baselines": {"ar": baselines.autoregression(values[:train_end], lookback)},
    }
    store.write_processed(name, splits, schema, prep)
    return paths.processed_dir(name)


def _preprocess_text(name: str, cfg) -> Path:
    """Characters -> indices (vocabulary from the train part; 0 = unknown), cut into sequences
    whose targets are the inputs shifted by one character."""
    codes = read_raw(name)[0]
    text = "".join(map(chr, codes))
    n = len(text)
    train_end = n - round(n * cfg.split.test) - round(n * cfg.split.val)
    val_end = n - round(n * cfg.split.test)
    vocab = ["<unk>", *sorted(set(text[:train_end]))]
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index.get(c, 0) for c in text], np.int64)
    parts = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, n)}
    splits = {}
    for split, (lo, hi) in parts.items():
        stride = cfg.seq_len // 2 if split == "train" else cfg.seq_len  # overlap only in train
        starts = np.arange(lo, hi - cfg.seq_len - 1, stride)
        if len(starts) == 0:
            raise PipelineError(f"datasets.{name}: the {split} part is shorter than seq_len")
        splits[split] = {
            "x": np.stack([ids[s : s + cfg.seq_len] for s in starts]),
            "y": np.stack([ids[s + 1 : s + cfg.seq_len + 1] for s in starts]),
        }
    splits["train"]["char_counts"] = np.bincount(ids[:train_end], minlength=len(vocab))
    schema = {
        "dataset": name,
        "source": cfg.source,
        "task": "language_model",
        "input_shape": [cfg.seq_len],
        "vocab_size": len(vocab),
        "vocab": vocab,
        "counts": {s: len(a["y"]) for s, a in splits.items()},
        "chars": {s: hi - lo for s, (lo, hi) in parts.items()},
        "split": cfg.split.model_dump(),
    }
    store.write_processed(name, splits, schema)
    return paths.processed_dir(name)


def handling_notes(described: dict) -> list[str]:
    """One line per thing ingest or preprocess did to the user's data that the numbers alone
    would hide (skipped files, filled or dropped values), from raw meta.json or schema.json."""
    notes = []
    skipped = described.get("skipped_unreadable") or []
    if skipped:
        shown = ", ".join(skipped[:5]) + (
            f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        notes.append(f"skipped {len(skipped)} unreadable image(s): {shown}")
    missing = described.get("missing_values") or {}
    policy = described.get("nan_policy")
    numeric = set(described.get("encoding", {}).get("numeric", []))
    filled = {c: n for c, n in missing.items() if c in numeric}
    if policy == "drop" and missing:
        per_column = ", ".join(f"{col}: {n}" for col, n in missing.items())
        notes.append(
            f"dropped {described['rows_dropped']} row(s) with missing values ({per_column})"
        )
    elif policy in ("impute_mean", "impute_median") and filled:
        counts = [f"{n} in {col}" for col, n in filled.items()]
        counts[0] = counts[0].replace(" in ", " value(s) in ", 1)
        how = policy.removeprefix("impute_")
        notes.append(f"imputed {', '.join(counts)} ({how} of the train split)")
    if policy in ("impute_mean", "impute_median") and len(filled) < len(missing):
        empty = ", ".join(f"{n} in {c}" for c, n in missing.items() if c not in filled)
        notes.append(f"left missing categories as no category (all-zero one-hot): {empty}")
    return notes


def raw_meta(name: str) -> dict:
    path = paths.raw_meta_file(name)
    _require(path, f"ingest@{name}")
    return json.loads(path.read_text())


def read_raw(name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The ingested x and y of a non-table source, in memory, and its meta.json."""
    _require(paths.raw_array_file(name, "x"), f"ingest@{name}")
    x, y = (np.load(paths.raw_array_file(name, k), allow_pickle=False) for k in ("x", "y"))
    return x, y, json.loads(paths.raw_meta_file(name).read_text())


def load_schema(name: str) -> dict:
    path = paths.schema_file(name)
    _require(path, f"preprocess@{name}")
    return json.loads(path.read_text())


def load_split(name: str, split: str, on_disk: bool = False) -> tuple:
    """Inputs and targets of one split (see `load_arrays`)."""
    arrays = load_arrays(name, split, on_disk)
    return arrays["x"], arrays["y"]


def load_arrays(name: str, split: str, on_disk: bool = False) -> dict:
    """Every array saved for one split (series also keep timestamps and last inputs), in
    memory; with `on_disk`, the inputs `x` are read by rows from disk (`arrays.NpyRows`): the
    split as training takes it when it is larger than the memory budget. Either way `x` is
    as models take it (images scaled: `store.inputs`)."""
    folder = paths.split_dir(name, split)
    _require(folder / "x.npy", f"preprocess@{name}")
    if on_disk:
        return_freed_batches()
    x = store.inputs(folder)
    arrays = {path.stem: np.load(path) for path in sorted(folder.glob("*.npy")) if path.stem != "x"}
    return {"x": x if on_disk else x.read(), **arrays}


def inputs_bytes(name: str, splits=("train", "val"), on_disk: bool = False) -> int:
    """Bytes of the processed inputs of `splits` held in memory as models take them (float32
    images), or with `on_disk` as stored (uint8 images); read from the files' headers."""
    for split in splits:
        _require(paths.split_dir(name, split) / "x.npy", f"preprocess@{name}")
    rows = [store.inputs(paths.split_dir(name, s)) for s in splits]
    return sum(len(r) * r.row_bytes if on_disk else r.nbytes for r in rows)


def expected_inputs_bytes(name: str, cfg: DatasetParams) -> tuple[int | None, int | None, bool]:
    """(bytes of the processed inputs of all splits on disk, in memory, exact): read from
    the files once preprocessed; before, estimated for image sources (uint8 pixels stored,
    float32 in memory) and None for the others, whose size is known once ingested."""
    if (paths.split_dir(name, "train") / "x.npy").is_file():
        return inputs_bytes(name, paths.SPLITS, True), inputs_bytes(name, paths.SPLITS), True
    pixels = {"sklearn_digits": 64 * 1797}.get(cfg.source)
    if cfg.source in vision.SOURCES:
        per_image, total = (3 * 32 * 32, 60000) if cfg.source == "cifar10" else (784, 70000)
        pixels = per_image * (cfg.limit or total)
    elif cfg.source == "image_folder" and Path(cfg.path).is_dir():
        from pipeline.data.preprocessing import IMAGE_SUFFIXES

        files = sum(
            1
            for folder in Path(cfg.path).iterdir()
            if folder.is_dir()
            for f in os.scandir(folder)
            if os.path.splitext(f.name)[1].lower() in IMAGE_SUFFIXES
        )
        pixels = files * cfg.channels * cfg.size[0] * cfg.size[1]
    return pixels, (None if pixels is None else pixels * 4), False


def memory_budget(cfg: DataParams, gpu_free: int | None = None) -> int:
    """Bytes of train and val inputs held in memory (`data.in_memory_max_mb`); by default a
    quarter of the memory available now, and of `gpu_free` when training on a GPU."""
    if cfg.in_memory_max_mb is not None:
        return cfg.in_memory_max_mb << 20
    budget = available_memory() // 4
    return budget if gpu_free is None else min(budget, gpu_free // 4)


def return_freed_batches() -> None:
    """Have glibc give every batch-sized block back to the system when it is freed. Its
    default raises the size above which blocks are mapped on their own (to up to 32 MB) each
    time such a block is freed, so the batches read from disk and the activations of the
    next steps land in its heap, where freed pieces of different sizes pile up: a train stage
    streaming 64x64 photos peaked anywhere from 1.2 to 1.6 GB from run to run. A fixed 1 MB
    threshold keeps the peak at the working set. No-op without glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3  # from glibc's malloc.h; setting it turns the adjustment off
    libc.mallopt(m_mmap_threshold, 1 << 20)


def available_memory() -> int:
    """Memory the system can give without swapping: Linux's MemAvailable (free pages plus
    the page cache it can drop); elsewhere the free pages alone."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _require(path: Path, stage: str) -> None:
    if not path.is_file():
        raise PipelineError(f"{path} not found; run `dvc repro {stage}` first")
