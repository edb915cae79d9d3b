"""The params.yaml schema: typed, strict, frozen; errors name the key, the value, what is allowed.

params.yaml has three sections: `datasets` (named data sources), `defaults` (settings every
experiment shares) and `experiments` (named experiments: a dataset plus overrides of defaults),
and an optional `schedule` (when the Prefect retrain flow runs). An experiment resolves as
`defaults` deep-merged with `experiments.<name>`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    create_model,
    field_validator,
    model_validator,
)

from models.configs import CONFIGS
from pipeline.errors import ParamsError, PipelineError
from pipeline.schema_errors import has_path, unknown_key, validate
from pipeline.tasks.kinds import GENERATIVE, KINDS, families_for, higher_is_better


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- datasets -------------------------------------------------------------------------------


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


class DigitsDataset(Strict):
    """scikit-learn's bundled 8x8 handwritten digits: image classification, offline."""

    source: Literal["sklearn_digits"]
    split: SplitParams = SplitParams()
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


class TorchvisionDataset(Strict):
    """MNIST, Fashion-MNIST, KMNIST or CIFAR-10 from their standard files under `root`."""

    source: Literal["mnist", "fashion_mnist", "kmnist", "cifar10"]
    root: str = Field("data/external", description="folder holding torchvision's standard files")
    download: bool = Field(False, description="fetch missing files with torchvision")
    limit: int | None = Field(None, ge=10, description="a seeded subset of this many images")
    split: SplitParams = Field(SplitParams(), description="test: the official test set")
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
    split: SplitParams = SplitParams()
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


DatasetParams = Annotated[
    Union[  # noqa: UP007
        TextDataset,
        DigitsDataset,
        SeriesDataset,
        TextCorpusDataset,
        TableDataset,
        TorchvisionDataset,
        ImageFolderDataset,
    ],
    Field(discriminator="source"),
]
DATASET_TASK = {
    "sklearn_digits": "classification",
    "statsmodels": "forecasting",
    "python_docstrings": "language_model",
    "table": None,  # its own `task`, or inferred from the target column
    "text": "text_classification",  # token ids: recurrent models only
    **{
        s: "classification" for s in ("mnist", "fashion_mnist", "kmnist", "cifar10", "image_folder")
    },
}


# ---- models: one section per family, built from its config in models/configs.py ------------


def _model_params(name: str, config_cls: type) -> type[Strict]:
    """The params.yaml section of one model family: the fields, defaults, constraints and docs
    of its config dataclass, plus `name` to pick the family."""
    hints = typing.get_type_hints(config_cls, include_extras=True)
    fields = {
        f.name: (hints[f.name], Field(f.default, description=f.metadata.get("doc")))
        for f in dataclasses.fields(config_cls)
    }
    cls_name = config_cls.__name__.removesuffix("Config") + "Params"
    return create_model(cls_name, __base__=Strict, name=(Literal[name], ...), **fields)


MODEL_PARAMS = {name: _model_params(name, cls) for name, cls in CONFIGS.items()}
ModelParams = Annotated[Union[tuple(MODEL_PARAMS.values())], Field(discriminator="name")]  # noqa: UP007

# ---- training, evaluation, tracking ---------------------------------------------------------


class OptimizerParams(Strict):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = Field("adamw", description="optimizer")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (decoupled for adamw)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop only")
    nesterov: bool = Field(False, description="sgd only")
    beta1: float = Field(0.9, ge=0, lt=1, description="adam/adamw first-moment decay (GANs: 0.5)")


class SchedulerParams(Strict):
    name: Literal["none", "cosine", "step", "plateau", "onecycle"] = Field(
        "cosine", description="learning-rate schedule"
    )
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="step/plateau: decay factor")
    patience: int = Field(5, ge=0, description="plateau: epochs without improvement")
    warmup_epochs: int = Field(0, ge=0, description="linear warmup before cosine/step")

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_epochs and self.name in ("plateau", "onecycle"):
            raise ValueError(f"warmup_epochs does not combine with {self.name!r}")
        return self


class EarlyStoppingParams(Strict):
    metric: str = Field("val/loss", pattern=r"^val/", description="a val/... metric of the task")
    patience: int = Field(10, ge=0, description="epochs without improvement; 0 disables")
    restore_best: bool = Field(True, description="end with the weights of the best epoch")


class AdversarialParams(Strict):
    """GAN training: discriminator steps per generator step, smoothing, collapse detection."""

    d_steps: int = Field(1, ge=1, description="discriminator steps per generator step")
    d_lr: float | None = Field(None, gt=0, description="discriminator lr; null: optimizer.lr")
    real_label: float = Field(0.9, gt=0.5, le=1, description="one-sided label smoothing")
    collapse_steps: int = Field(300, ge=1, description="steps of near-zero D loss = collapse")
    collapse_loss: float = Field(0.01, gt=0, description="D loss below this counts as near zero")
    min_diversity: float = Field(0.1, ge=0, description="sample spread / real spread floor")


class AugmentStep(Strict):
    """One torchvision.transforms.v2 transform by name, with its keyword arguments."""

    name: Literal[
        "random_rotation",
        "random_affine",
        "random_crop",
        "random_horizontal_flip",
        "random_vertical_flip",
        "color_jitter",
        "random_erasing",
        "gaussian_noise",
    ]
    args: dict[str, Any] = Field({}, description="keyword arguments of the torchvision transform")


class TrainParams(Strict):
    epochs: int = Field(30, ge=1, description="passes over the train split")
    batch_size: int = Field(64, ge=1, description="samples per step")
    optimizer: OptimizerParams = OptimizerParams()
    scheduler: SchedulerParams = SchedulerParams()
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null disables")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="classification only")
    l1: float = Field(0.0, ge=0, description="L1 penalty on weights")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: loss weights inverse to class counts"
    )
    sampler: Literal["shuffle", "weighted"] = Field(
        "shuffle", description="weighted: draw classes equally often (imbalanced data)"
    )
    init: Literal["default", "kaiming", "xavier", "orthogonal"] = Field(
        "default",
        description="weight initialisation of Linear/Conv layers (recurrent weights: orthogonal)",
    )
    adversarial: AdversarialParams = AdversarialParams()
    augment: tuple[AugmentStep, ...] = Field((), description="image transforms, training only")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: forward passes and losses under autocast (supervised models; GPUs "
        "with bf16 tensor cores gain most); weights and optimizer state stay fp32",
    )
    channels_last: bool = Field(
        False, description="image models: NHWC memory layout, faster convolutions on GPUs"
    )
    compile: bool = Field(
        False, description="torch.compile the model's forward (a one-off compile of seconds)"
    )
    checkpoint_interval: float = Field(
        10.0,
        ge=0,
        description="seconds between resumable checkpoints (0: after every epoch); the last "
        "epoch is always saved. Saving costs milliseconds, a tiny model's epoch about as much",
    )
    deterministic: bool = Field(
        False,
        description="torch.use_deterministic_algorithms: bit-identical reruns on one machine "
        "(some CUDA ops are slower or refused; checked before the first epoch)",
    )
    distributed: Literal["none", "ddp"] = Field(
        "none",
        description="ddp: DistributedDataParallel over nproc_per_node processes started by "
        "torchrun (gloo on CPU, nccl on CUDA); batch_size stays the global batch",
    )
    nproc_per_node: int = Field(
        2, ge=1, description="processes with distributed: ddp (on CUDA: one per GPU)"
    )


class Corruption(Strict):
    """A test-time corruption of images: gaussian noise (severity = std on [0, 1] pixels) or
    a rotation (severity = degrees)."""

    name: Literal["gaussian_noise", "rotation"]
    severity: float = Field(
        gt=0, description="noise std in [0, 1] pixel units, or rotation degrees"
    )


class EvaluateParams(Strict):
    batch_size: int = Field(512, ge=1, description="samples per evaluation batch")
    corruptions: tuple[Corruption, ...] = Field(
        (), description="image classifiers: test accuracy under each, as test/robust/..."
    )


def _no_password(url: str) -> str:
    """A URL in params.yaml must not carry a password: params are copied into dvc.lock,
    MLflow and the report. Credentials come from the environment instead."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        secret = parts.password
    except ValueError:  # not a URL with a parsable network location
        secret = None
    if secret:
        shown = url.replace(f":{secret}@", ":***@", 1)
        raise ValueError(
            f"holds a password ({shown}); params.yaml is copied into dvc.lock, MLflow and the "
            "report, so give credentials in the environment: MLFLOW_TRACKING_USERNAME/"
            "MLFLOW_TRACKING_PASSWORD for an MLflow server, PGPASSWORD for PostgreSQL, "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for S3"
        )
    return url


Url = Annotated[str, AfterValidator(_no_password)]


class TrackingParams(Strict):
    enabled: bool = Field(
        True, description="false: no MLflow at all (no runs, no registry, no champion decision)"
    )
    uri: Url = Field(
        "sqlite:///mlflow.db",
        description="MLflow tracking store: sqlite:///file, postgresql://, http(s)://, or a folder",
    )
    artifact_location: Url = Field(
        "mlartifacts", description="where new MLflow experiments store artifacts (folder or s3://)"
    )
    experiment_name: str = Field("dl-pipeline", description="MLflow experiment of every run")

    @field_validator("experiment_name")
    @classmethod
    def _safe(cls, name: str) -> str:
        problem = unsafe_name(name)
        if problem:
            raise ValueError(problem)
        return name

    system_metrics: bool = Field(False, description="log CPU/GPU/memory use of each run")
    log_model: bool = Field(True, description="log and register the trained model")


# ---- tuning ---------------------------------------------------------------------------------

Direction = Literal["minimize", "maximize"]
# objectives that are not validation metrics: the model's size and its inference time
EXTRA_OBJECTIVES = ("parameters", "latency_ms")
PRIMITIVE = (str, int, float, bool, type(None))


class _SpaceItem(Strict):
    when: dict[str, Any] = Field(
        {}, description="sample only when these dotted params have these values (or lists)"
    )


class _RangeSpace(_SpaceItem):
    @model_validator(mode="after")
    def _range(self):
        _check_range(self)
        return self


class FloatSpace(_RangeSpace):
    type: Literal["float"]
    low: float = Field(description="lowest value")
    high: float = Field(description="highest value")
    log: bool = Field(False, description="sample on a log scale")
    step: float | None = Field(None, gt=0, description="spacing of values; null: continuous")


class IntSpace(_RangeSpace):
    type: Literal["int"]
    low: int = Field(description="lowest value")
    high: int = Field(description="highest value")
    log: bool = Field(False, description="sample on a log scale")
    step: int = Field(1, ge=1, description="spacing of values")


class CategoricalSpace(_SpaceItem):
    type: Literal["categorical"]
    choices: tuple[Any, ...] = Field(min_length=1, description="values to choose from")


def _check_range(item) -> None:
    if not item.low < item.high:
        raise ValueError(f"empty range: low ({item.low}) must be below high ({item.high})")
    if item.log and item.low <= 0:
        raise ValueError(f"log: true needs low > 0, got {item.low}")
    if item.log and item.step not in (None, 1):
        raise ValueError("step does not combine with log: true")


SpaceItem = Annotated[
    Union[FloatSpace, IntSpace, CategoricalSpace],  # noqa: UP007
    Field(discriminator="type"),
]


class TuneParams(Strict):
    """An Optuna search over dotted params (model.*, train.*, seed) of one experiment."""

    enabled: bool = Field(False, description="run an Optuna search in tune@<experiment>")
    use_tuned: bool = Field(True, description="train merges the best trial's params")
    space: dict[str, SpaceItem] = Field(
        {}, description="dotted param path -> search range (float, int or categorical)"
    )
    metric: str | tuple[str, ...] = Field(
        "val/loss", description="a val/... metric, or several for multi-objective"
    )
    direction: Direction | tuple[Direction, ...] | None = Field(
        None, description="per metric; null: maximize accuracy-like metrics, else minimize"
    )
    n_trials: int = Field(20, ge=1, description="finished trials in total, across resumes")
    timeout: float | None = Field(None, gt=0, description="seconds; stop starting new trials")
    seed: int = Field(0, description="seed of the sampler")
    sampler: Literal["tpe", "random", "cmaes", "gp", "grid", "nsgaii"] = Field(
        "tpe", description="Optuna sampler"
    )
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = Field(
        "median", description="stops unpromising trials early"
    )
    startup_trials: int = Field(5, ge=0, description="median pruner: trials before pruning")
    warmup_epochs: int = Field(3, ge=0, description="epochs before a trial can be pruned")
    epochs: int | None = Field(None, ge=1, description="epochs per trial; null: train.epochs")
    pareto_choice: Literal["knee", "first"] = Field(
        "knee", description="multi-objective: the Pareto trial nearest the ideal, or best first"
    )
    workers: int = Field(1, ge=1, description="local worker processes")
    storage: Url | None = Field(
        None, description="null: a journal file under artifacts/<exp>/; or an RDB URL"
    )
    heartbeat_seconds: int = Field(10, ge=1, description="a trial silent for 2x this is failed")

    @model_validator(mode="after")
    def _objectives_fit(self):
        metrics = self.metrics()
        for metric in metrics:
            if not (metric.startswith("val/") or metric in EXTRA_OBJECTIVES):
                raise ValueError(
                    f"metric {metric!r}: use a val/... metric or one of "
                    f"{', '.join(EXTRA_OBJECTIVES)}"
                )
        if len(metrics) == 1 and not metrics[0].startswith("val/"):
            raise ValueError("a single objective must be a val/... metric")
        if isinstance(self.direction, tuple) and len(self.direction) != len(metrics):
            raise ValueError(
                f"direction has {len(self.direction)} entries for {len(metrics)} metrics"
            )
        if len(metrics) > 1 and self.pruner != "none":
            raise ValueError("pruning needs a single objective; set pruner: none")
        if self.sampler == "grid":
            for path, item in self.space.items():
                if isinstance(item, FloatSpace) and item.step is None:
                    raise ValueError(
                        f"sampler grid: space {path!r} needs a step (or categorical choices)"
                    )
        return self

    def metrics(self) -> tuple[str, ...]:
        return (self.metric,) if isinstance(self.metric, str) else self.metric

    def directions(self) -> tuple[str, ...]:
        """One direction per metric (the declared ones, or inferred from the metric's name)."""
        if self.direction is None:
            return tuple(_default_direction(m) for m in self.metrics())
        if isinstance(self.direction, str):
            return (self.direction,) * len(self.metrics())
        return self.direction


def _default_direction(metric: str) -> str:
    return "maximize" if higher_is_better(metric) else "minimize"


class Defaults(Strict):
    seed: int = Field(42, description="seeds data order, initialisation and sampling")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when present, else CPU"
    )
    model: ModelParams = MODEL_PARAMS["mlp"](name="mlp")
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    tune: TuneParams = TuneParams()


class ExperimentParams(Defaults):
    """One experiment, resolved: defaults < experiments.<name>."""

    dataset: str = Field(description="name of a dataset in `datasets`")


class ScheduleParams(Strict):
    """`make serve`: Prefect runs the retrain flow on this schedule (see pipeline/flows.py)."""

    cron: str | None = Field(None, description="five cron fields, e.g. '0 3 * * *'; null: none")
    timezone: str = Field("UTC", description="IANA name the cron is read in, e.g. Europe/Berlin")
    pull: bool = Field(False, description="`dvc pull` before retraining (needs a DVC remote)")
    push: bool = Field(False, description="`dvc push` after retraining (needs a DVC remote)")

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str | None) -> str | None:
        from datetime import datetime

        from cronsim import CronSim, CronSimError

        if cron is not None:
            try:
                CronSim(cron, datetime.now())
            except CronSimError as err:
                raise ValueError(
                    f"{cron!r} is not a cron expression ({err}); expected five fields: "
                    "minute hour day-of-month month day-of-week"
                ) from None
        return cron

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, name: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not an IANA time zone, e.g. Europe/Berlin") from None
        return name


class Params(Strict):
    datasets: dict[str, DatasetParams]
    defaults: Defaults
    experiments: dict[str, ExperimentParams]
    schedule: ScheduleParams = ScheduleParams()
    _source: str = PrivateAttr("params.yaml")

    @property
    def source(self) -> str:
        """The file these params were read from."""
        return self._source


SECTIONS = ("datasets", "defaults", "experiments", "schedule")


def judged_by(params: Params, dataset: str) -> list[str]:
    """The generative experiments scored by `dataset`'s judge."""
    return [
        name
        for name, exp in params.experiments.items()
        if exp.dataset == dataset and exp.model.name in GENERATIVE
    ]


def require_declared(params: Params, kind: str, name: str, source: str | Path) -> None:
    """`name` must be a dataset (kind 'dataset') or experiment declared in `source`."""
    declared = params.datasets if kind == "dataset" else params.experiments
    if name not in declared:
        raise PipelineError(f"{kind} {name!r} is not in {source}; declared: {', '.join(declared)}")


# ---- loading --------------------------------------------------------------------------------

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def unsafe_name(name: str) -> str | None:
    """Why `name` cannot name folders (data/raw/<name>, artifacts/<name>) and MLflow runs and
    models, or None. Path separators and '..' could reach outside the project's folders."""
    if SAFE_NAME.fullmatch(name) and ".." not in name:
        return None
    return (
        f"{name!r} is not a safe name: use letters, digits, '_', '-' and '.', starting with a "
        "letter or digit (no '/', '\\' or '..'): it names folders and MLflow runs"
    )


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError listing every problem found."""
    path = Path(path)
    raw = _read_yaml(path)
    problems: list[str] = []
    for key in raw:
        if key not in SECTIONS:
            problems.append(unknown_key(key, key, SECTIONS))
    datasets_raw = _mapping(raw, "datasets", problems, required=True)
    defaults_raw = _mapping(raw, "defaults", problems, required=False)
    experiments_raw = _mapping(raw, "experiments", problems, required=True)
    schedule_raw = _mapping(raw, "schedule", problems, required=False)

    for section, names in (("datasets", datasets_raw), ("experiments", experiments_raw)):
        for name in names:
            if unsafe_name(str(name)):
                problems.append(f"{section}.{name}: not a safe name; {unsafe_name(str(name))}")
    datasets = {}
    for name, spec in datasets_raw.items():
        datasets[name] = validate(DatasetParams, spec, lambda _, n=name: f"datasets.{n}", problems)
    defaults = validate(Defaults, defaults_raw, lambda _: "defaults", problems)

    experiments = {}
    for name, overrides in experiments_raw.items():
        where = f"experiments.{name}"
        if not isinstance(overrides, dict):
            problems.append(
                f"{where}: expected a mapping with at least 'dataset', got {overrides!r}"
            )
            continue
        merged = merge_overrides(defaults_raw, overrides)
        exp = validate(
            ExperimentParams,
            merged,
            lambda keys, o=overrides, w=where: (
                w if has_path(o, keys) or not has_path(defaults_raw, keys) else "defaults"
            ),
            problems,
        )
        dataset = overrides.get("dataset")
        # (with no datasets section at all, that one problem is reported alone)
        if isinstance(dataset, str) and datasets_raw and dataset not in datasets_raw:
            declared = ", ".join(sorted(datasets_raw)) or "none"
            problems.append(
                f"{where}.dataset: {dataset!r} is not a declared dataset; declared: {declared}"
            )
        elif exp is not None and datasets.get(exp.dataset) is not None:
            problems += _compatibility(where, exp, datasets[exp.dataset])
            problems += _metric_problems(where, overrides, exp, datasets[exp.dataset])
        if exp is not None and exp.tune.enabled:
            problems += _space_problems(where, merged, exp.tune)
        experiments[name] = exp
    schedule = validate(ScheduleParams, schedule_raw, lambda _: "schedule", problems)
    if "experiments" in raw and isinstance(raw["experiments"], dict) and not experiments_raw:
        problems.append("experiments: empty; declare at least one (a dataset and a model)")
    if path.name == "params.yaml" and path.with_name("dvc.yaml").is_file():
        problems += dvc_params_problems(raw, path.with_name("dvc.yaml"))
    if problems:
        # a bad default shows up once per experiment too; say it once
        raise ParamsError(path, list(dict.fromkeys(problems)))
    params = Params(
        datasets=datasets, defaults=defaults, experiments=experiments, schedule=schedule
    )
    params._source = str(path)
    return params


def dvc_params_problems(raw: dict, dvc_yaml: Path) -> list[str]:
    """The keys that dvc.yaml's stages track (their `params:`) and params.yaml lacks. DVC
    refuses to run such a stage only when it gets there, after the stages before it ran; the
    schema's defaults do not help, since DVC reads the file itself. Reported here, before any
    stage runs, with the first stage that needs each key."""
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return []  # DVC reports the problems of its own file
    needed: dict[str, str] = {}  # key -> the first stage that tracks it
    for name, stage in stages.items():
        if not isinstance(stage, dict):
            continue
        body, items = stage, [(None, None)]
        if "foreach" in stage:  # `foreach: ${datasets}` or `${experiments}`
            over = raw.get(str(stage["foreach"]).strip("${} "))
            body, items = (
                stage.get("do") or {},
                list(over.items()) if isinstance(over, dict) else [],
            )
        for key, item in items:
            for param in body.get("params") or []:
                if not isinstance(param, str):
                    continue  # {file: [keys]}: another params file
                if key is not None:
                    param = param.replace("${key}", str(key))
                    if isinstance(item, dict):
                        param = param.replace("${item.dataset}", str(item.get("dataset")))
                if "${" not in param:
                    needed.setdefault(param, name if key is None else f"{name}@{key}")
    return [
        f"{param}: missing; dvc.yaml's stage {stage} tracks it, and `dvc repro` would stop "
        f"there. Add it to params.yaml (for a section, `{param.rsplit('.', 1)[-1]}: {{}}` "
        "keeps every default)"
        for param, stage in needed.items()
        if not has_path(raw, param.split("."))
    ]


def _compatibility(where: str, exp: ExperimentParams, dataset) -> list[str]:
    if exp.train.distributed == "ddp" and exp.model.name in GENERATIVE:
        return [
            f"{where}.train.distributed: 'ddp' is for supervised models (mlp, cnn, rnn, "
            f"pretrained); {exp.model.name} trains in one process: set distributed: none"
        ]
    task = DATASET_TASK[dataset.source] or getattr(dataset, "task", "auto")
    if task == "auto":  # a table's task is inferred from its target: either fits until then
        able = tuple(dict.fromkeys(families_for("classification") + families_for("regression")))
    else:
        able = families_for(task)
    if exp.model.name in able:
        return []
    fits = ", ".join(able)
    return [
        f"{where}.model.name: {exp.model.name!r} cannot learn dataset {exp.dataset!r} ({task}); "
        f"models for {task}: {fits}"
    ]


def _metric_problems(where: str, overrides: dict, exp: ExperimentParams, dataset) -> list[str]:
    """Early stopping and tuning must watch a metric the experiment's task reports; training
    would stop on it only after tuning ran. Each problem names the section that set the key."""
    if exp.model.name in GENERATIVE:
        tasks = [exp.model.name]
    else:
        task = DATASET_TASK[dataset.source] or getattr(dataset, "task", "auto")
        task = {"text_classification": "classification"}.get(task, task)
        tasks = ["classification", "regression"] if task == "auto" else [task]
    reported = tuple(dict.fromkeys(m for t in tasks for m in KINDS[t].val_metrics))
    watched = [(("train", "early_stopping", "metric"), exp.train.early_stopping.metric)]
    if exp.tune.enabled:
        watched += [(("tune", "metric"), m) for m in exp.tune.metrics() if m.startswith("val/")]
    return [
        f"{where if has_path(overrides, keys) else 'defaults'}.{'.'.join(keys)}: "
        f"{metric!r} is not reported when {exp.model.name} learns dataset "
        f"{exp.dataset!r}; choose from {', '.join(reported)}"
        for keys, metric in watched
        if metric not in reported
    ]


def _space_problems(where: str, merged: dict, tune: TuneParams) -> list[str]:
    """Every search-space entry must name a real param and its extreme values must be valid
    there: checked by validating the experiment with each end of the range (or each choice)."""
    problems = []
    for path, item in tune.space.items():
        at = f"{where}.tune.space.{path}"
        if not (path == "seed" or path.startswith(("model.", "train."))):
            problems.append(f"{at}: only model.*, train.* and seed can be tuned")
            continue
        when = {k: v[0] if isinstance(v, list) and v else v for k, v in item.when.items()}
        values = item.choices if isinstance(item, CategoricalSpace) else (item.low, item.high)
        for value in values:
            found: list[str] = []
            candidate = merge_overrides(merged, unflatten({**when, path: value}))
            validate(ExperimentParams, candidate, lambda _: "", found)
            if found:
                problems += [f"{at}: with {value!r}: {p.lstrip('.')}" for p in found]
                break
    return problems


def apply_overrides(exp: ExperimentParams, overrides: dict, where: str) -> ExperimentParams:
    """`exp` with nested `overrides` merged over it (tuned params: defaults < experiment <
    tuned), validated again; `where` names the overrides' source in errors."""
    problems: list[str] = []
    merged = merge_overrides(exp.model_dump(mode="json"), overrides)
    resolved = validate(ExperimentParams, merged, lambda _: where, problems)
    if problems:
        raise PipelineError("; ".join(problems))
    return resolved


def unflatten(flat: dict[str, Any]) -> dict:
    """{'train.lr': 1} -> {'train': {'lr': 1}}: the inverse of `flatten`."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def merge_overrides(base: dict, overrides: dict) -> dict:
    """Deep-merge `overrides` over `base`. A model section naming another family replaces it;
    one without a name refines the model it lands on."""
    out = dict(base)
    for key, value in overrides.items():
        old = out.get(key)
        same_model = key != "model" or (
            isinstance(old, dict)
            and isinstance(value, dict)
            and value.get("name", old.get("name")) == old.get("name")
        )
        if isinstance(old, dict) and isinstance(value, dict) and same_model:
            out[key] = merge_overrides(old, value)
        else:
            out[key] = value
    return out


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}: the form MLflow params and DVC -S keys use."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


class _StrictLoader(yaml.SafeLoader):
    """safe_load that also refuses duplicate keys (YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ParamsError(path, [f"file not found (looked in {path.resolve().parent})"])
    try:
        loader = _StrictLoader(path.read_text())
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.constructor.ConstructorError as err:
        where = f"line {err.problem_mark.line + 1}: " if err.problem_mark else ""
        if "python/" in str(err.problem):  # e.g. !!python/object/apply: would run code
            tag = str(err.problem).split("tag ", 1)[-1]
            raise ParamsError(path, [f"{where}tag {tag} is not allowed: plain data only"]) from None
        raise ParamsError(path, [f"{where}{err.problem}"]) from None
    except yaml.YAMLError as err:
        raise ParamsError(path, [f"not valid YAML: {err}".replace("\n", " ")]) from None
    if raw is None:
        raise ParamsError(path, [f"the file is empty; expected sections {', '.join(SECTIONS)}"])
    if not isinstance(raw, dict):
        raise ParamsError(path, [f"expected a mapping with sections {', '.join(SECTIONS)}"])
    return raw


def _mapping(raw: dict, key: str, problems: list[str], *, required: bool) -> dict:
    value = raw.get(key)
    if value is None:
        if required:
            problems.append(f"{key}: missing section; it maps names to {key[:-1]} settings")
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key}: expected a mapping, got {value!r}")
        return {}
    return value
