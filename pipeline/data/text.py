"""Text classification sources: `text`, a CSV (or Parquet) file with a text column and a
label column (sentiment analysis and the like), and `cldr_names`, the names of countries,
languages and currencies as several languages write them (Babel's copy of the Unicode CLDR
data), labelled by language.

The tokeniser and the vocabulary (built on the train split only) are the fitted
`preprocessing.TextPreprocessor`, which the registered model carries.
"""

from __future__ import annotations

import numpy as np

from pipeline import paths
from pipeline.data import preprocessing, table
from pipeline.errors import PipelineError


def ingest(name: str, cfg):
    if cfg.source == "cldr_names":
        meta = {"source": cfg.source, "locales": list(cfg.locales), "kinds": list(cfg.kinds)}
        return table.write_raw(name, cldr_names(name, cfg), meta)
    return table.ingest(name, cfg, [cfg.text_column, cfg.label_column])


def cldr_names(name: str, cfg):
    """Every name of `cfg.kinds` (territories, languages, currencies) in each locale, labelled
    by the locale; a name that two of the languages write alike ("Canada") is left out, as
    its language cannot be told."""
    import pandas as pd
    from babel import Locale, UnknownLocaleError

    rows = []
    for locale in cfg.locales:
        try:
            names = Locale.parse(locale)
        except (UnknownLocaleError, ValueError):
            raise PipelineError(
                f"datasets.{name}.locales: {locale!r} is not a CLDR locale; use names like "
                "en, fr, de, pt_BR"
            ) from None
        rows += [(text, locale) for kind in cfg.kinds for text in getattr(names, kind).values()]
    frame = pd.DataFrame(rows, columns=[cfg.text_column, cfg.label_column]).drop_duplicates()
    shared = frame.groupby(cfg.text_column)[cfg.label_column].transform("nunique") > 1
    return frame[~shared].reset_index(drop=True)


def preprocess(name: str, cfg):
    """-> (splits {split: {x, y, index}}, schema, fitted preprocessor) for data.py to write."""
    import pandas as pd

    from pipeline.data.splits import stratified_split

    frame = pd.read_parquet(paths.raw_table_file(name))
    texts, labels = frame[cfg.text_column], frame[cfg.label_column]
    bad = int((texts.isna() | (texts.astype(str).str.strip() == "")).sum() + labels.isna().sum())
    if bad:
        raise PipelineError(
            f"datasets.{name}: {bad} rows have an empty text or label in {cfg.path}; remove them"
        )
    classes = sorted(labels.astype(str).unique())
    y = labels.astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    splits = stratified_split(y, cfg.split.val, cfg.split.test, cfg.split.seed, classes, name)
    texts = texts.astype(str).to_numpy()
    prep = preprocessing.TextPreprocessor.fit(texts[splits["train"]], cfg, {"classes": classes})
    x = prep.transform(texts)
    lengths = np.array([len(prep.tokenize(t)) for t in texts])
    out = {s: {"x": x[i], "y": y[i], "index": i} for s, i in splits.items()}
    schema = {
        "dataset": name,
        "source": cfg.source,
        "task": "classification",
        "input_shape": [cfg.max_length],
        "vocab_size": len(prep.vocab),
        "vocab": prep.vocab,
        "classes": classes,
        "num_classes": len(classes),
        "counts": {s: len(i) for s, i in splits.items()},
        "class_counts": {
            s: np.bincount(y[i], minlength=len(classes)).tolist() for s, i in splits.items()
        },
        "truncated": int((lengths > cfg.max_length).sum()),
        "tokenizer": cfg.tokenizer,
    }
    return out, schema, prep
