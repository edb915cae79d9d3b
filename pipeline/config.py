"""params.yaml: the whole schema (typed, strict, frozen; its sections in pipeline/params/) and
its loading, where errors name the key, the value and what is allowed.

params.yaml has three sections: `datasets` (named data sources), `defaults` (settings every
experiment shares) and `experiments` (named experiments: a dataset plus overrides of defaults),
an optional `synthetic` (datasets made of another one's splits plus a generative experiment's
images) and an optional `schedule` (when the Prefect retrain flow runs). An experiment resolves as
`defaults` deep-merged with `experiments.<name>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    field_validator,
)

from pipeline.errors import ParamsError, PipelineError
from pipeline.params.base import Strict, unsafe_name
from pipeline.params.datasets import DATASET_TASK, DatasetParams, SyntheticDataset
from pipeline.params.models import MODEL_PARAMS, ModelParams
from pipeline.params.training import DataParams, EvaluateParams, TrackingParams, TrainParams
from pipeline.params.tuning import CategoricalSpace, TuneParams
from pipeline.schema_errors import has_path, unknown_key, validate
from pipeline.tasks.kinds import GENERATIVE, KINDS, families_for


class Defaults(Strict):
    seed: int = Field(42, description="seeds data order, initialisation and sampling")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when present, else CPU"
    )
    model: ModelParams = MODEL_PARAMS["mlp"](name="mlp")
    data: DataParams = DataParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    tune: TuneParams = TuneParams()


class ExperimentParams(Defaults):
    """One experiment, resolved: defaults < experiments.<name>."""

    dataset: str = Field(description="name of a dataset in `datasets` or `synthetic`")


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
    synthetic: dict[str, SyntheticDataset] = {}
    schedule: ScheduleParams = ScheduleParams()
    _source: str = PrivateAttr("params.yaml")

    @property
    def source(self) -> str:
        """The file these params were read from."""
        return self._source


SECTIONS = ("datasets", "defaults", "experiments", "synthetic", "schedule")
# the datasets a synthetic one can extend: those of images (labelled classes)
IMAGE_SOURCES = tuple(source for source, task in DATASET_TASK.items() if task == "classification")
# generative families whose samples can be asked for by class (when `conditional`)
CONDITIONAL = ("gan", "vae")


def dataset_params(params: Params, name: str) -> DatasetParams:
    """The params of dataset `name`; for a synthetic one, those of its base (its images)."""
    if name in params.synthetic:
        name = params.synthetic[name].base
    return params.datasets[name]


def data_stage(params: Params, name: str) -> str:
    """The stage that writes data/processed/<name>."""
    return f"synthesize@{name}" if name in params.synthetic else f"preprocess@{name}"


def judged_by(params: Params, dataset: str) -> list[str]:
    """The generative experiments scored by `dataset`'s judge."""
    return [
        name
        for name, exp in params.experiments.items()
        if exp.dataset == dataset and exp.model.name in GENERATIVE
    ]


def require_declared(params: Params, kind: str, name: str, source: str | Path) -> None:
    """`name` must be a dataset (kind 'dataset'), a synthetic dataset (kind 'synthetic
    dataset') or an experiment declared in `source`."""
    declared = {
        "dataset": params.datasets,
        "synthetic dataset": params.synthetic,
    }.get(kind, params.experiments)
    if name not in declared:
        raise PipelineError(f"{kind} {name!r} is not in {source}; declared: {', '.join(declared)}")


# ---- loading --------------------------------------------------------------------------------


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
    synthetic_raw = _mapping(raw, "synthetic", problems, required=False)

    for section, names in (
        ("datasets", datasets_raw),
        ("experiments", experiments_raw),
        ("synthetic", synthetic_raw),
    ):
        for name in names:
            if unsafe_name(str(name)):
                problems.append(f"{section}.{name}: not a safe name; {unsafe_name(str(name))}")
    datasets = {}
    for name, spec in datasets_raw.items():
        datasets[name] = validate(DatasetParams, spec, lambda _, n=name: f"datasets.{n}", problems)
    defaults = validate(Defaults, defaults_raw, lambda _: "defaults", problems)
    synthetic = {}
    for name, spec in synthetic_raw.items():
        if name in datasets_raw:
            problems.append(f"synthetic.{name}: also a name in `datasets`; give it another name")
            continue
        synthetic[name] = validate(
            SyntheticDataset, spec, lambda _, n=name: f"synthetic.{n}", problems
        )

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
        declared = {**datasets_raw, **synthetic_raw}
        # a synthetic dataset is its base's images, for what a model can learn from it (an
        # invalid one resolves to nothing here: its own problems are reported)
        made = synthetic.get(dataset)
        images = made.base if made is not None else dataset
        # (with no datasets section at all, that one problem is reported alone)
        if isinstance(dataset, str) and datasets_raw and dataset not in declared:
            declared = ", ".join(sorted(declared)) or "none"
            problems.append(
                f"{where}.dataset: {dataset!r} is not a declared dataset; declared: {declared}"
            )
        elif exp is not None and datasets.get(images) is not None:
            problems += _compatibility(where, exp, datasets[images])
            problems += _metric_problems(where, overrides, exp, datasets[images])
            if made is not None and exp.model.name in GENERATIVE:
                problems.append(
                    f"{where}.dataset: {dataset!r} is a synthetic dataset, for classifiers; "
                    f"{exp.model.name} learns from real images: use {images!r}"
                )
        if exp is not None and exp.tune.enabled:
            problems += _space_problems(where, merged, exp.tune)
        experiments[name] = exp
    schedule = validate(ScheduleParams, schedule_raw, lambda _: "schedule", problems)
    for name, cfg in synthetic.items():
        if cfg is not None:
            problems += _synthetic_problems(f"synthetic.{name}", cfg, datasets, experiments)
    if "experiments" in raw and isinstance(raw["experiments"], dict) and not experiments_raw:
        problems.append("experiments: empty; declare at least one (a dataset and a model)")
    if path.name == "params.yaml" and path.with_name("dvc.yaml").is_file():
        problems += dvc_params_problems(raw, path.with_name("dvc.yaml"))
    if problems:
        # a bad default shows up once per experiment too; say it once
        raise ParamsError(path, list(dict.fromkeys(problems)))
    params = Params(
        datasets=datasets,
        defaults=defaults,
        experiments=experiments,
        synthetic=synthetic,
        schedule=schedule,
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


def _synthetic_problems(where: str, cfg: SyntheticDataset, datasets, experiments) -> list[str]:
    """A synthetic dataset extends an image classification dataset with the samples of a
    conditional generative experiment that learnt images like it."""
    problems = []
    base = datasets.get(cfg.base)
    if cfg.base not in datasets:
        declared = ", ".join(sorted(datasets)) or "none"
        problems.append(f"{where}.base: {cfg.base!r} is not in `datasets`; declared: {declared}")
    elif base is not None and base.source not in IMAGE_SOURCES:
        problems.append(
            f"{where}.base: {cfg.base!r} is a {base.source} dataset; generated training data is "
            f"for image classification ({', '.join(IMAGE_SOURCES)})"
        )
    gen = experiments.get(cfg.from_)
    if cfg.from_ not in experiments:
        declared = ", ".join(sorted(experiments)) or "none"
        problems.append(f"{where}.from: {cfg.from_!r} is not an experiment; declared: {declared}")
    elif gen is not None and (
        gen.model.name not in CONDITIONAL or not getattr(gen.model, "conditional", False)
    ):
        problems.append(
            f"{where}.from: {cfg.from_!r} is a {gen.model.name} experiment that cannot draw "
            f"images of a class asked for; name one whose model is a {' or '.join(CONDITIONAL)} "
            "with conditional: true"
        )
    return problems


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
