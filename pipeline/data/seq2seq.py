"""Sequence pairs for translation models: the `dates` source (dates written out by Babel, the
Unicode CLDR locale data, in several languages and formats, each paired with its ISO
`YYYY-MM-DD` form) and the `seq2seq` source (a user's CSV/Parquet file with a source and a
target column).

Both are ingested as a raw table and preprocessed alike: split with every pair of one target
in one split (for dates: train, val and test hold different dates), tokenised into characters
or words with vocabularies from the train split, written as padded id arrays. Each split also
keeps its raw strings (`source_text`, `target_text`): BLEU and exact match are scored against
the text as written, not against ids that may have lost rare tokens.
"""

from __future__ import annotations

import numpy as np

from pipeline import paths
from pipeline.data import store, table
from pipeline.data.preprocessing import SPECIALS, PairPreprocessor, encode, tokenize
from pipeline.errors import PipelineError


def columns(cfg) -> tuple[str, str]:
    """The raw table's source and target columns."""
    if cfg.source == "dates":
        return "source", "target"
    return cfg.source_column, cfg.target_column


def ingest(name: str, cfg):
    if cfg.source == "seq2seq":
        return table.ingest(name, cfg, list(columns(cfg)))
    meta = {"source": cfg.source, "locales": list(cfg.locales), "formats": list(cfg.formats)}
    return table.write_raw(name, dates_frame(name, cfg), meta)


def dates_frame(name: str, cfg):
    """`cfg.samples` distinct dates drawn (seeded) from `cfg.years`, each written in one
    randomly drawn locale and format: columns source, target, locale, format."""
    import datetime as dt

    import pandas as pd
    from babel import Locale, UnknownLocaleError
    from babel.dates import format_date

    for locale in cfg.locales:
        try:
            Locale.parse(locale)
        except (UnknownLocaleError, ValueError):
            raise PipelineError(
                f"datasets.{name}.locales: {locale!r} is not a CLDR locale; use names like "
                "en_US, fr_FR, de_DE, ja_JP"
            ) from None
    first, last = dt.date(cfg.years[0], 1, 1), dt.date(cfg.years[1], 12, 31)
    days = (last - first).days + 1
    if cfg.samples > days:
        raise PipelineError(
            f"datasets.{name}.samples: {cfg.samples} distinct dates asked for, but years "
            f"{cfg.years[0]}-{cfg.years[1]} hold {days}: lower samples or widen years"
        )
    rng = np.random.default_rng(cfg.seed)
    offsets = np.sort(rng.choice(days, cfg.samples, replace=False))
    locales = rng.choice(len(cfg.locales), cfg.samples)
    formats = rng.choice(len(cfg.formats), cfg.samples)
    rows = []
    for offset, loc, fmt in zip(offsets.tolist(), locales.tolist(), formats.tolist(), strict=True):
        day = first + dt.timedelta(days=offset)
        locale, form = cfg.locales[loc], cfg.formats[fmt]
        rows.append((format_date(day, form, locale=locale), day.isoformat(), locale, form))
    return pd.DataFrame(rows, columns=["source", "target", "locale", "format"])


def preprocess(name: str, cfg):
    """Split, fit the vocabularies on train, write x (N, S) source ids and y (N, T + 1) target
    ids (BOS, tokens, EOS, padding) per split, and the schema."""
    import pandas as pd

    src_col, tgt_col = columns(cfg)
    frame = pd.read_parquet(paths.raw_table_file(name), columns=[src_col, tgt_col])
    empty = frame[src_col].isna() | frame[tgt_col].isna()
    empty |= (frame[src_col].astype(str).str.strip() == "") | (
        frame[tgt_col].astype(str).str.strip() == ""
    )
    if empty.any():
        rows = ", ".join(str(i) for i in np.flatnonzero(empty)[:5])
        raise PipelineError(
            f"datasets.{name}: {int(empty.sum())} row(s) have an empty {src_col!r} or "
            f"{tgt_col!r} (rows {rows}); remove them"
        )
    # fixed-width unicode arrays: .npy files that load without pickle
    sources = np.array(frame[src_col].astype(str).tolist(), dtype=str)
    targets = np.array(frame[tgt_col].astype(str).tolist(), dtype=str)
    if len(frame) < 10:
        raise PipelineError(f"datasets.{name}: {len(frame)} pairs; at least 10 are needed")
    # every pair of one target in one split: nothing of a test answer is seen in training
    splits = table.split_rows(name, cfg, None, pd.Series(targets), None)
    tokenizer = getattr(cfg, "tokenizer", "char")
    cap_src = getattr(cfg, "max_source_length", 64)
    cap_tgt = getattr(cfg, "max_target_length", 64)
    max_vocab = getattr(cfg, "max_vocab", 20_000)
    src_tokens = [tokenize(t, tokenizer) for t in sources]
    tgt_tokens = [tokenize(t, tokenizer) for t in targets]
    train = splits["train"]
    src_vocab = vocabulary((src_tokens[i] for i in train), SPECIALS[:2], max_vocab)
    tgt_vocab = vocabulary((tgt_tokens[i] for i in train), SPECIALS, max_vocab)
    src_len = min(cap_src, max(len(src_tokens[i]) for i in train))
    tgt_len = min(cap_tgt, max(len(tgt_tokens[i]) for i in train))
    x = encode(src_tokens, src_vocab, src_len)
    y = encode(tgt_tokens, tgt_vocab, tgt_len, bos_eos=True)
    out = {
        s: {"x": x[i], "y": y[i], "source_text": sources[i], "target_text": targets[i]}
        for s, i in splits.items()
    }
    pairs = frame.assign(s=sources, t=targets).drop_duplicates(["s", "t"])
    schema = {
        "dataset": name,
        "source": cfg.source,
        "task": "seq2seq",
        "input_shape": [src_len],
        "vocab_size": len(src_vocab),  # source tokens
        "num_classes": len(tgt_vocab),  # target tokens: the width of the decoder's output
        "horizon": tgt_len + 1,  # the most tokens a decoder writes, EOS included
        "tokenizer": tokenizer,
        "source_vocab": src_vocab,
        "target_vocab": tgt_vocab,
        "counts": {s: len(i) for s, i in splits.items()},
        "truncated": {
            "source": sum(len(t) > src_len for t in src_tokens),
            "target": sum(len(t) > tgt_len for t in tgt_tokens),
        },
        # a source written for two different targets caps exact match below 1
        "ambiguous_sources": int((pairs.groupby("s")["t"].nunique() > 1).sum()),
        "split": cfg.split.model_dump(),
    }
    example = [str(sources[i]) for i in train[:3]]
    prep = PairPreprocessor({"vocab": tgt_vocab}, src_col, tokenizer, src_len, src_vocab, example)
    store.write_processed(name, out, schema, prep)
    return paths.processed_dir(name)


def vocabulary(sequences, specials: tuple[str, ...], max_size: int) -> list[str]:
    """The specials, then the train tokens by frequency (ties alphabetically), `max_size` in
    all: rarer ones read as <unk>."""
    from collections import Counter

    counts = Counter(tok for seq in sequences for tok in seq)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    return [*specials, *ranked[: max_size - len(specials)]]
