"""The `text` source: a CSV (or Parquet) file with a text column and a label column, for
text classification (sentiment analysis and the like) with the recurrent family.

Tokens are lower-cased words (and punctuation) or characters; the vocabulary is built on the
train split only (min frequency, size cap; 0 = padding, 1 = unknown); every text becomes
`max_length` token ids, truncated, padded on the left so the last step is real text.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from pipeline import data_table, paths
from pipeline.errors import PipelineError

PAD, UNK = "<pad>", "<unk>"
WORD = re.compile(r"\w+|[^\w\s]")


def ingest(name: str, cfg):
    return data_table.ingest(name, cfg, [cfg.text_column, cfg.label_column])


def tokenize(text: str, cfg) -> list[str]:
    text = text.lower() if cfg.lowercase else text
    return WORD.findall(text) if cfg.tokenizer == "word" else list(text)


def build_vocab(token_lists, cfg) -> list[str]:
    counts = Counter(tok for tokens in token_lists for tok in tokens)
    kept = [
        t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= cfg.min_freq
    ]
    return [PAD, UNK, *kept[: cfg.max_vocab - 2]]


def encode(tokens: list[str], index: dict[str, int], length: int) -> np.ndarray:
    ids = [index.get(t, 1) for t in tokens][:length]
    return np.array([0] * (length - len(ids)) + ids, np.int64)


def preprocess(name: str, cfg):
    """-> (splits {split: {x, y}}, schema) for data.py to write."""
    import pandas as pd

    from pipeline.data import stratified_split

    frame = pd.read_parquet(paths.raw_dir(name) / data_table.RAW_TABLE)
    texts, labels = frame[cfg.text_column], frame[cfg.label_column]
    bad = int((texts.isna() | (texts.astype(str).str.strip() == "")).sum() + labels.isna().sum())
    if bad:
        raise PipelineError(
            f"datasets.{name}: {bad} rows have an empty text or label in {cfg.path}; remove them"
        )
    classes = sorted(labels.astype(str).unique())
    y = labels.astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    splits = stratified_split(y, cfg.split.val, cfg.split.test, cfg.split.seed, classes, name)
    tokens = [tokenize(t, cfg) for t in texts.astype(str)]
    vocab = build_vocab([tokens[i] for i in splits["train"]], cfg)
    index = {t: i for i, t in enumerate(vocab)}
    x = np.stack([encode(t, index, cfg.max_length) for t in tokens])
    lengths = np.array([len(t) for t in tokens])
    out = {s: {"x": x[i], "y": y[i]} for s, i in splits.items()}
    schema = {
        "dataset": name,
        "source": "text",
        "task": "classification",
        "input_shape": [cfg.max_length],
        "vocab_size": len(vocab),
        "vocab": vocab,
        "classes": classes,
        "num_classes": len(classes),
        "counts": {s: len(i) for s, i in splits.items()},
        "class_counts": {
            s: np.bincount(y[i], minlength=len(classes)).tolist() for s, i in splits.items()
        },
        "truncated": int((lengths > cfg.max_length).sum()),
        "tokenizer": cfg.tokenizer,
    }
    return out, schema
