"""The `datasets` section: one class per data source, picked by `source`."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from pipeline.params.base import Strict


class SeriesSplit(Strict):
    """By position: the last `test` fraction of the data is the test part, `val` before it."""

    val: float = Field(0.15, gt=0, lt=1, description="fraction for validation")
    test: float = Field(0.15, gt=0, lt=1, description="fraction for the test split")

    @model_validator(mode="after")
    def _leaves_training_data(self):
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test = {self.val + self.test:g} leaves too little to train on")
        return self


class SplitParams(SeriesSplit):
    """Stratified by class and seeded."""

    test: float = Field(0.2, gt=0, lt=1, description="fraction for the test split")
    seed: int = Field(0, description="seed of the stratified split")


class ImageSplit(SplitParams):
    """Stratified by class and seeded; `train_fraction` keeps a share of the train split for
    low-data experiments (val and test stay those of the whole dataset)."""

    train_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="share of the train split kept (stratified, seeded; at least one image "
        "of each class): a low-data version of the dataset, same val and test images",
    )


class DigitsDataset(Strict):
    """scikit-learn's bundled 8x8 handwritten digits: image classification, offline."""

    source: Literal["sklearn_digits"]
    split: ImageSplit = ImageSplit()
    normalize: bool = Field(True, description="standardise with train-split statistics")


class SeriesDataset(Strict):
    """A univariate time series bundled with statsmodels, as sliding windows."""

    source: Literal["statsmodels"]
    name: Literal["sunspots", "nile"] = Field("sunspots", description="which bundled series")
    lookback: int = Field(24, ge=1, description="past steps in one input window")
    horizon: int = Field(1, ge=1, description="future steps predicted per window")
    split: SeriesSplit = SeriesSplit()


class TextCorpusDataset(Strict):
    """Docstrings of Python standard-library modules: an offline corpus for character-level
    language models. Split by position (the end of the text is val, then test)."""

    source: Literal["python_docstrings"]
    modules: tuple[str, ...] = Field(
        (
            "json",
            "collections",
            "functools",
            "itertools",
            "pathlib",
            "argparse",
            "textwrap",
            "string",
            "statistics",
            "inspect",
        ),
        description="standard-library modules whose docstrings form the corpus",
    )
    max_chars: int = Field(120_000, ge=1_000, description="characters kept from the corpus")
    seq_len: int = Field(64, ge=2, description="characters per training sequence")
    split: SeriesSplit = SeriesSplit(val=0.1, test=0.1)


class TableDataset(Strict):
    """A CSV or Parquet file: one row per sample, a target column and feature columns."""

    source: Literal["table"]
    path: str = Field(description="CSV or Parquet file")
    target: str = Field(description="column to predict")
    features: tuple[str, ...] | None = Field(None, description="default: every other column")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto",
        description="auto: regression for fractional or many-valued numbers, else classification",
    )
    nan: Literal["fail", "drop", "impute_mean", "impute_median"] = Field(
        "fail",
        description="missing values: fail with a report, drop rows, impute (train statistics)",
    )
    group: str | None = Field(None, description="rows sharing a group stay in one split")
    split: SplitParams = SplitParams()
    normalize: bool = Field(True, description="standardise numeric columns with train statistics")


class BundledTableDataset(TableDataset):
    """A table bundled with scikit-learn (real measurements, offline), read as a `table`
    source: breast_cancer (569 tumours, 30 features, two classes), wine (178, 13, three),
    iris (150, 4, three) or diabetes (442, 10, disease progression as a value)."""

    source: Literal["sklearn_table"]  # type: ignore[assignment]
    name: Literal["breast_cancer", "wine", "iris", "diabetes"] = Field(
        description="which bundled table"
    )
    path: str | None = Field(None, description="not used: the table ships with scikit-learn")
    target: str = Field("target", description="column to predict")


class TorchvisionDataset(Strict):
    """MNIST, Fashion-MNIST, KMNIST or CIFAR-10 from their standard files under `root`."""

    source: Literal["mnist", "fashion_mnist", "kmnist", "cifar10"]
    root: str = Field("data/external", description="folder holding torchvision's standard files")
    download: bool = Field(False, description="fetch missing files with torchvision")
    limit: int | None = Field(None, ge=10, description="a seeded subset of this many images")
    split: ImageSplit = Field(ImageSplit(), description="test: the official test set")
    normalize: bool = Field(True, description="standardise with train-split statistics")


class ImageFolderDataset(Strict):
    """One sub-folder per class of PNG/JPEG files (torchvision's ImageFolder layout)."""

    source: Literal["image_folder"]
    path: str = Field(description="folder of <class>/<image> files")
    size: tuple[Annotated[int, Field(ge=4)], Annotated[int, Field(ge=4)]] = Field(
        (32, 32), description="height, width after resizing"
    )
    channels: Literal[1, 3] = Field(3, description="1 (grey) or 3 (RGB)")
    max_bad_fraction: float = Field(0.01, ge=0, lt=1, description="unreadable images allowed")
    split: ImageSplit = ImageSplit()
    normalize: bool = Field(True, description="standardise with train-split statistics")


class TextDataset(Strict):
    """A CSV/Parquet file with a text column and a label column (text classification)."""

    source: Literal["text"]
    path: str = Field(description="CSV or Parquet file")
    text_column: str = Field("text", description="column holding the text")
    label_column: str = Field("label", description="column holding the class")
    tokenizer: Literal["word", "char"] = Field("word", description="split into words or characters")
    lowercase: bool = Field(True, description="lower-case before tokenising")
    min_freq: int = Field(1, ge=1, description="rarer train tokens become <unk>")
    max_vocab: int = Field(20_000, ge=3, description="most frequent train tokens kept")
    max_length: int = Field(64, ge=1, description="tokens per text: truncated or padded")
    split: SplitParams = SplitParams()


class CldrNamesDataset(TextDataset):
    """The names of countries, languages and currencies as each of several languages writes
    them (Babel's copy of the Unicode CLDR data), labelled by language: offline text
    classification. Names two languages write alike are left out."""

    source: Literal["cldr_names"]  # type: ignore[assignment]
    locales: tuple[str, ...] = Field(
        ("en", "fr", "de", "es", "it", "nl", "pt", "sv"),
        min_length=2,
        description="CLDR locales: the classes",
    )
    kinds: tuple[Literal["territories", "languages", "currencies"], ...] = Field(
        ("territories", "languages", "currencies"), min_length=1, description="names taken"
    )
    path: str | None = Field(None, description="not used: the names ship with Babel")
    label_column: str = Field("language", description="column holding the class")
    tokenizer: Literal["word", "char"] = Field("char", description="split into words or characters")
    lowercase: bool = Field(False, description="lower-case before tokenising")
    max_length: int = Field(32, ge=1, description="tokens per text: truncated or padded")


class DatesDataset(Strict):
    """Dates written out by Babel (the Unicode CLDR locale data) in several languages and
    formats, each paired with its ISO YYYY-MM-DD form: sequence-to-sequence translation,
    offline. Train, val and test hold different dates."""

    source: Literal["dates"]
    locales: tuple[str, ...] = Field(
        ("en_US", "en_GB", "fr_FR", "de_DE", "es_ES", "it_IT", "nl_NL", "pt_BR"),
        min_length=1,
        description="CLDR locales the dates are written in",
    )
    formats: tuple[Literal["short", "medium", "long", "full"], ...] = Field(
        ("medium", "long", "full"),
        min_length=1,
        description="CLDR date formats (short en_US dates read like short es_ES or it_IT "
        "ones: 5/12/26; schema.json counts such ambiguous sources)",
    )
    samples: int = Field(20_000, ge=100, description="distinct dates, each written once")
    years: tuple[int, int] = Field((1950, 2049), description="first and last year drawn from")
    seed: int = Field(0, description="seed of the dates, locales and formats drawn")
    split: SplitParams = SplitParams(val=0.1, test=0.1)

    @model_validator(mode="after")
    def _years_in_order(self):
        if not 1 <= self.years[0] <= self.years[1] <= 9999:
            raise ValueError(f"years {list(self.years)}: first <= last, within 1..9999")
        return self


class Seq2SeqDataset(Strict):
    """A CSV/Parquet file of (source, target) text pairs: translation and the like."""

    source: Literal["seq2seq"]
    path: str = Field(description="CSV or Parquet file")
    source_column: str = Field("source", description="column holding the input text")
    target_column: str = Field("target", description="column holding the text to produce")
    tokenizer: Literal["char", "word"] = Field("char", description="characters or words")
    max_source_length: int = Field(64, ge=1, description="source tokens kept (rest truncated)")
    max_target_length: int = Field(64, ge=1, description="target tokens kept (rest truncated)")
    max_vocab: int = Field(20_000, ge=5, description="most frequent train tokens kept per side")
    split: SplitParams = Field(
        SplitParams(), description="random, with every pair of one target in one split"
    )


class SyntheticDataset(Strict):
    """A dataset made by synthesize@<name>: the splits of `base` (an image classification
    dataset), with class-conditional images of a trained generative experiment added to its
    train split; val and test stay `base`'s real images. Experiments name it as `dataset:`."""

    base: str = Field(description="the image dataset (in `datasets`) whose splits it keeps")
    from_: str = Field(
        alias="from",
        description="a conditional gan or vae experiment whose samples are added (trained on "
        "images of base's shape and classes)",
    )
    per_class: int = Field(ge=1, le=100_000, description="generated images added per class")
    seed: int = Field(0, description="seeds the generator's noise")


DatasetParams = Annotated[
    Union[  # noqa: UP007
        TextDataset,
        DigitsDataset,
        SeriesDataset,
        TextCorpusDataset,
        TableDataset,
        TorchvisionDataset,
        ImageFolderDataset,
        DatesDataset,
        Seq2SeqDataset,
        BundledTableDataset,
        CldrNamesDataset,
    ],
    Field(discriminator="source"),
]
DATASET_TASK = {
    "sklearn_digits": "classification",
    "statsmodels": "forecasting",
    "python_docstrings": "language_model",
    "table": None,  # its own `task`, or inferred from the target column
    "sklearn_table": None,
    "text": "text_classification",  # token ids: the rnn and transformer families
    "cldr_names": "text_classification",
    "dates": "seq2seq",
    "seq2seq": "seq2seq",
    **{
        s: "classification" for s in ("mnist", "fashion_mnist", "kmnist", "cifar10", "image_folder")
    },
}
