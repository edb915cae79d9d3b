"""The fitted preprocessing of each dataset kind: raw inputs -> what the model takes, and the
model's outputs -> labels with probabilities or values in the target's units.

preprocess@<dataset> fits one of these on the train split, writes the processed arrays with
its `transform` and saves it as data/processed/<dataset>/preprocessor.json. The registered
model carries the same file (pipeline/tracking/serving.py), so the pipeline and whoever serves the
model apply the same code to the same fitted numbers. The state is plain JSON rather than a
pickled scikit-learn object: loading a model must not run code from its artifact, and the
table fit streams over files larger than memory (OneHotEncoder has no partial_fit).

Light on purpose: numpy here, pandas and PIL when a method needs them, no torch or MLflow.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


# MLflow column type -> the pandas dtype a caller passes it as
PANDAS_TYPES = {"double": np.float64, "long": np.int64, "boolean": bool, "string": object}


class InputError(PipelineError, ValueError):
    """Raw inputs the model cannot take; the message names the column or value."""


class Preprocessor(ABC):
    """Base: the target side (classes, or the target scaler) shared by every input kind."""

    kind = ""

    def __init__(self, target: dict):
        # {"classes": [...]} for classification, {"mean", "std", "horizon"} for values
        self.target = target

    def state(self) -> dict:
        """Everything `load` needs, as JSON-ready values."""
        return {"kind": self.kind, "target": self.target, **self._state()}

    @abstractmethod
    def _state(self) -> dict:
        """The kind's own fitted numbers."""

    @abstractmethod
    def transform(self, raw) -> np.ndarray:
        """Raw inputs -> the array the model takes."""

    def raw_columns(self) -> list[tuple[str, str]] | None:
        """(column, "double" | "string") of the raw rows; None when inputs are arrays."""
        return None

    def example_input(self):
        """A few raw training inputs, as a caller would pass them."""
        import pandas as pd

        columns = self.raw_columns()
        frame = pd.DataFrame(self.example, columns=[c for c, _ in columns])
        for col, kind in columns:
            frame[col] = frame[col].astype(PANDAS_TYPES[kind])
        return frame

    def describe(self) -> dict:
        """What a caller needs to know to read input files for the model (MLflow metadata)."""
        return {"input": self.kind, "columns": [c for c, _ in self.raw_columns() or []]}

    def kind_of_task(self) -> str:
        if "classes" in self.target:
            return "classification"
        return "forecasting" if self.kind == "series" else "regression"

    def scale_target(self, values: np.ndarray) -> np.ndarray:
        """Targets in their own units -> what the model learns (regression, forecasting)."""
        return ((values - self.target["mean"]) / self.target["std"]).astype(np.float32)

    def decode(self, outputs: np.ndarray):
        """Model outputs -> a DataFrame: `label`, `confidence` and `p_<class>` per class, or
        `prediction` (one column per horizon step) in the target's units."""
        import pandas as pd

        if "classes" in self.target:
            classes = self.target["classes"]
            shifted = np.exp(outputs - outputs.max(1, keepdims=True))
            probs = shifted / shifted.sum(1, keepdims=True)
            best = probs.argmax(1)
            frame = pd.DataFrame({"label": np.asarray(classes, dtype=object)[best]})
            frame["confidence"] = probs[np.arange(len(probs)), best]
            for i, name in enumerate(classes):
                frame[f"p_{name}"] = probs[:, i]
            return frame
        values = outputs.reshape(len(outputs), -1) * self.target["std"] + self.target["mean"]
        names = (
            ["prediction"]
            if values.shape[1] == 1
            else [f"prediction_{i + 1}" for i in range(values.shape[1])]
        )
        return pd.DataFrame(values.astype(np.float64), columns=names)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.state(), indent=1) + "\n")


# ---------------------------------------------------------------------------------- images


class ImagePreprocessor(Preprocessor):
    """Images (N, C, H, W) in their raw units (0-255, or 0-16 for digits) -> divided by the
    top of that range, then standardised per channel with train statistics. Image files are
    decoded and resized as ingest does."""

    kind = "image"

    def __init__(self, target, shape, value_range, mean, std, size=None, example=None):
        super().__init__(target)
        self.shape = tuple(shape)  # (C, H, W)
        self.value_range = list(value_range)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.size = tuple(size) if size else tuple(self.shape[1:])
        self.example = example or []  # one raw train image, for MLflow's input example

    @classmethod
    def fit(cls, train_blocks, value_range, normalize: bool, target: dict, size=None):
        """Per-channel statistics of the train images (N, C, H, W) in raw units, given as
        blocks of images (an array is one block): a split larger than memory is fine."""
        if isinstance(train_blocks, np.ndarray):
            train_blocks = [train_blocks]
        top = np.float32(value_range[1])
        count, total, squares, example = 0, 0.0, 0.0, None
        for block in train_blocks:
            x = block / top
            axes = (0, *range(2, x.ndim))
            count += x.size // x.shape[1]
            total = total + x.sum(axis=axes, dtype=np.float64)
            squares = squares + np.square(x).sum(axis=axes, dtype=np.float64)
            example = block[:1].tolist() if example is None else example
            shape = x.shape[1:]
        channels = shape[0]
        if normalize:
            mean = total / count
            std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        else:
            mean, std = np.zeros(channels), np.ones(channels)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(target, shape, value_range, mean, std, size, example)

    def _state(self) -> dict:
        return {
            "shape": list(self.shape),
            "value_range": self.value_range,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "size": list(self.size),
            "example": self.example,
        }

    def example_input(self):
        return np.asarray(self.example, np.float32)

    def describe(self) -> dict:
        return {
            "input": self.kind,
            "shape": list(self.shape),
            "size": list(self.size),
            "value_range": self.value_range,
        }

    def transform(self, raw) -> np.ndarray:
        # one float32 copy, scaled in place: the stages scale every block of pixels they read
        x = np.array(raw, dtype=np.float32)
        size = int(np.prod(self.shape))
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != size:
            raise InputError(
                f"images of shape {tuple(x.shape[1:])}; the model takes {self.shape} "
                f"({size} values per image, in 0..{self.value_range[1]:g})"
            )
        x = x.reshape(len(x), *self.shape)
        x /= np.float32(self.value_range[1])
        shape = (1, -1) + (1,) * (x.ndim - 2)
        x -= self.mean.reshape(shape)
        x /= self.std.reshape(shape)
        return x

    def read_image(self, source) -> np.ndarray:
        """One image file (a path or its bytes) -> (C, H, W) float32 in the raw units."""
        return read_image(source, self.describe())


def read_image(source, description: dict) -> np.ndarray:
    """An image file as the model described by `description` (ImagePreprocessor.describe,
    saved in the registered model's metadata) takes it: decoded and resized as ingest does,
    in the dataset's raw units (8-bit pixels scaled to 0-16 for digits)."""
    pixels = decode_image(source, description["size"], description["shape"][0])
    top = description["value_range"][1]
    return pixels if top == 255 else pixels * np.float32(top / 255)


def decode_image(source, size: tuple[int, int], channels: int) -> np.ndarray:
    """A PNG/JPEG (path or bytes) -> (C, H, W) float32 in 0..255, converted to grayscale or
    RGB and resized bilinearly to `size` (height, width). PIL's errors pass through: the
    caller decides whether an unreadable image is skipped or fatal."""
    import io

    from PIL import Image

    opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    with opened as img:
        img = img.convert("L" if channels == 1 else "RGB")
        img = img.resize((size[1], size[0]), Image.BILINEAR)
        pixels = np.asarray(img, np.float32).reshape(size[0], size[1], channels)
    return pixels.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


# ---------------------------------------------------------------------------------- tables


class TablePreprocessor(Preprocessor):
    """Raw table rows (a DataFrame with the original columns) -> numeric columns
    standardised with train statistics, text columns one-hot over their train categories
    (unseen or missing: all zeros), missing numbers filled per the dataset's NaN policy."""

    kind = "table"

    def __init__(
        self, target, numeric, stats, categorical, fill, nan_policy, example=None, types=None
    ):
        super().__init__(target)
        # the MLflow type of each numeric column as read from the file: long, double, boolean
        self.types = types or {}
        self.numeric = list(numeric)
        self.stats = {c: tuple(v) for c, v in stats.items()}
        self.categorical = {c: list(v) for c, v in categorical.items()}
        self.fill = fill
        self.nan_policy = nan_policy
        self.example = example or []  # a few raw train rows (records), for MLflow's example

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def columns(self) -> list[str]:
        """The encoded columns, in the model's input order."""
        return self.numeric + [f"{c}={v}" for c, vs in self.categorical.items() for v in vs]

    def _state(self) -> dict:
        return {
            "numeric": self.numeric,
            "stats": {c: list(v) for c, v in self.stats.items()},
            "categorical": self.categorical,
            "fill": self.fill,
            "nan_policy": self.nan_policy,
            "example": self.example,
            "types": self.types,
        }

    def raw_columns(self) -> list[tuple[str, str]]:
        numeric = [(c, self.types.get(c, "double")) for c in self.numeric]
        return numeric + [(c, "string") for c in self.categorical]

    def check(self, frame) -> None:
        """Every feature column present; numeric ones hold numbers; missing values only where
        the NaN policy imputes them."""
        import pandas as pd

        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise InputError(
                f"missing column(s) {', '.join(map(repr, missing))}; the model takes "
                f"{', '.join(map(repr, self.features))}"
            )
        for col in self.numeric:
            if not pd.api.types.is_numeric_dtype(frame[col]):
                as_numbers(frame[col], col)  # names the first value that is not a number
            if self.fill is None and frame[col].isna().any():
                rows = np.flatnonzero(frame[col].isna().to_numpy())[:5].tolist()
                raise InputError(
                    f"column {col!r} has missing values (rows {rows}); the model was trained "
                    f"with nan: {self.nan_policy}, which does not fill them"
                )

    def transform(self, raw) -> np.ndarray:
        import pandas as pd

        frame = raw if isinstance(raw, pd.DataFrame) else pd.DataFrame(raw)
        self.check(frame)
        frame = frame[self.features].copy()
        for col in self.numeric:
            frame[col] = as_numbers(frame[col], col).astype(np.float64)
        frame = frame.replace([np.inf, -np.inf], np.nan)
        if self.fill is not None:
            frame = frame.fillna(self.fill)
        parts = [
            ((frame[c].to_numpy(np.float64) - m) / s)[:, None] for c, (m, s) in self.stats.items()
        ]
        for col, values in self.categorical.items():
            as_text = frame[col].astype(str).to_numpy()
            parts.append(np.stack([as_text == v for v in values], axis=1))  # unseen: all zero
        return np.concatenate(parts, axis=1).astype(np.float32)


def as_numbers(values, column: str):
    """A column as numbers (missing values stay missing); text that is not a number is an
    InputError naming the column, the value and its row."""
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna() & values.notna()]
    if len(bad):
        raise InputError(
            f"column {column!r} holds {bad.iloc[0]!r} (row {bad.index[0]}); it takes numbers"
        )
    return numbers


# ------------------------------------------------------------------------------------ text

PAD, UNK = "<pad>", "<unk>"
WORD = re.compile(r"\w+|[^\w\s]")  # words and punctuation

# a target vocabulary starts with these (models/seq2seq.py reads the same ids); a source
# vocabulary with the first two
SPECIALS = (PAD, UNK, "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


def tokenize(text: str, tokenizer: str) -> list[str]:
    return WORD.findall(text) if tokenizer == "word" else list(text)


def detokenize(tokens: list[str], tokenizer: str) -> str:
    return " ".join(tokens) if tokenizer == "word" else "".join(tokens)


def encode(sequences, vocab: list[str], length: int, bos_eos: bool = False) -> np.ndarray:
    """Token lists -> (N, length) ids, padded on the right and truncated; with `bos_eos`,
    (N, length + 2): BOS, the tokens, EOS."""
    index = {t: i for i, t in enumerate(vocab)}
    width = length + 2 if bos_eos else length
    out = np.full((len(sequences), width), PAD_ID, np.int64)
    for row, seq in enumerate(sequences):
        ids = [index.get(t, UNK_ID) for t in seq[:length]]
        if bos_eos:
            ids = [BOS_ID, *ids, EOS_ID]
        out[row, : len(ids)] = ids
    return out


def decode_ids(ids, vocab: list[str], tokenizer: str) -> str:
    """Ids -> text, up to the first EOS (padding and BOS dropped; unknown tokens as <unk>)."""
    tokens = []
    for i in ids:
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            tokens.append(vocab[i])
    return detokenize(tokens, tokenizer)


class TextColumnPreprocessor(Preprocessor):
    """Raw rows whose one text `column` is the input (text classification, translation)."""

    column: str
    example: list[str]

    def raw_columns(self) -> list[tuple[str, str]]:
        return [(self.column, "string")]

    def example_input(self):
        import pandas as pd

        return pd.DataFrame({self.column: pd.Series(self.example, dtype=object)})

    def texts(self, raw, purpose: str) -> list[str]:
        """The strings of `raw` (a DataFrame holding the column, or a sequence of strings);
        InputError naming the column and the first row that is not text."""
        import pandas as pd

        if isinstance(raw, pd.DataFrame):
            if self.column not in raw.columns:
                raise InputError(f"missing column {self.column!r} ({purpose})")
            raw = raw[self.column]
        texts = list(raw)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InputError(
                f"column {self.column!r}: row {bad[0]} holds {texts[bad[0]]!r}, not text"
            )
        return texts


class TextPreprocessor(TextColumnPreprocessor):
    """Raw strings -> `max_length` token ids: lower-cased words and punctuation (or
    characters), ids from the train vocabulary (0 = padding, 1 = unknown), truncated, padded
    on the left so the last step is real text."""

    kind = "text"

    def __init__(self, target, column, tokenizer, lowercase, max_length, vocab, example=None):
        super().__init__(target)
        self.column = column
        self.tokenizer, self.lowercase, self.max_length = tokenizer, lowercase, max_length
        self.vocab = list(vocab)
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.example = example or []

    @classmethod
    def fit(cls, train_texts, cfg, target: dict):
        blank = cls(target, cfg.text_column, cfg.tokenizer, cfg.lowercase, cfg.max_length, [])
        counts = Counter(tok for text in train_texts for tok in blank.tokenize(text))
        kept = [
            t
            for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            if c >= cfg.min_freq
        ]
        vocab = [PAD, UNK, *kept[: cfg.max_vocab - 2]]
        example = [str(t) for t in list(train_texts)[:3]]
        return cls(
            target, cfg.text_column, cfg.tokenizer, cfg.lowercase, cfg.max_length, vocab, example
        )

    def _state(self) -> dict:
        return {
            "column": self.column,
            "tokenizer": self.tokenizer,
            "lowercase": self.lowercase,
            "max_length": self.max_length,
            "vocab": self.vocab,
            "example": self.example,
        }

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text.lower() if self.lowercase else text, self.tokenizer)

    def transform(self, raw) -> np.ndarray:
        texts = self.texts(raw, "the text to classify")
        return np.stack([self._ids(self.tokenize(t)) for t in texts]).astype(np.int64)

    def _ids(self, tokens: list[str]) -> np.ndarray:
        ids = [self.index.get(t, 1) for t in tokens][: self.max_length]
        return np.array([0] * (self.max_length - len(ids)) + ids, np.int64)


class PairPreprocessor(TextColumnPreprocessor):
    """Source texts -> token ids of the train vocabulary (truncated, padded on the right); the
    decoder's ids -> the translated text, in a `translation` column."""

    kind = "pairs"

    def __init__(self, target, column, tokenizer, length, vocab, example=None):
        super().__init__(target)  # {"vocab": the target vocabulary}
        self.column, self.tokenizer, self.length = column, tokenizer, length
        self.vocab = list(vocab)
        self.example = example or []

    def _state(self) -> dict:
        return {
            "column": self.column,
            "tokenizer": self.tokenizer,
            "length": self.length,
            "vocab": self.vocab,
            "example": self.example,
        }

    def kind_of_task(self) -> str:
        return "seq2seq"

    def transform(self, raw) -> np.ndarray:
        texts = self.texts(raw, "the text to translate")
        return encode([tokenize(t, self.tokenizer) for t in texts], self.vocab, self.length)

    def decode(self, outputs: np.ndarray):
        import pandas as pd

        ids = outputs.astype(np.int64).tolist()
        vocab = self.target["vocab"]
        texts = [decode_ids(row, vocab, self.tokenizer) for row in ids]
        return pd.DataFrame({"translation": pd.Series(texts, dtype=object)})


# ---------------------------------------------------------------------------------- series


class SeriesPreprocessor(Preprocessor):
    """Windows of `lookback` raw series values (oldest first; columns `t-<k>` ... `t-1`) ->
    scaled with the train part's mean and std; forecasts come back in the series' units."""

    kind = "series"

    def __init__(self, target, lookback: int, example=None):
        super().__init__(target)
        self.lookback = lookback
        self.example = example or []

    @property
    def columns(self) -> list[str]:
        return [f"t-{k}" for k in range(self.lookback, 0, -1)]

    def _state(self) -> dict:
        return {"lookback": self.lookback, "example": self.example}

    def raw_columns(self) -> list[tuple[str, str]]:
        return [(c, "double") for c in self.columns]

    def transform(self, raw) -> np.ndarray:
        import pandas as pd

        if isinstance(raw, pd.DataFrame):
            missing = [c for c in self.columns if c not in raw.columns]
            if missing:
                raise InputError(
                    f"missing column(s) {', '.join(map(repr, missing[:3]))}"
                    f"{' ...' if len(missing) > 3 else ''}; the model takes the last "
                    f"{self.lookback} values as columns {self.columns[0]!r} .. {self.columns[-1]!r}"
                )
            raw = raw[self.columns].to_numpy(np.float32)
        windows = np.asarray(raw, np.float32)
        if windows.ndim != 2 or windows.shape[1] != self.lookback:
            raise InputError(
                f"windows of shape {tuple(windows.shape[1:])}; the model takes "
                f"{self.lookback} values per window"
            )
        if not np.isfinite(windows).all():
            raise InputError("windows hold missing or infinite values")
        return self.scale_target(windows)[:, :, None]  # (N, lookback) -> (N, lookback, 1)


KINDS = {
    cls.kind: cls
    for cls in (
        ImagePreprocessor,
        TablePreprocessor,
        TextPreprocessor,
        SeriesPreprocessor,
        PairPreprocessor,
    )
}


def load(path: Path) -> Preprocessor:
    """The preprocessor saved at `path`."""
    state = json.loads(Path(path).read_text())
    cls = KINDS[state.pop("kind")]
    return cls(**state)
