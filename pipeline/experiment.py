"""One experiment, resolved and assembled: its params (defaults < experiment < tuned.yaml),
the model, data and task a training run needs, the trained model and the judge it is scored
by. Stages, tuning trials and verify-determinism build runs here; no stage imports another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import yaml

from pipeline import distributed, paths
from pipeline.config import ExperimentParams, Params, apply_overrides
from pipeline.data import datasets
from pipeline.data.arrays import NpyRows
from pipeline.errors import PipelineError
from pipeline.tasks.kinds import task_kind

if TYPE_CHECKING:
    import torch
    from torch import nn

    from models import DataSpec
    from pipeline.engine import Batches, Task
    from pipeline.params.training import DataParams


@dataclass
class Prepared:
    """Everything one training run needs, built from a resolved experiment."""

    model: nn.Module
    train: Batches  # this worker's shard under DDP
    val: Batches
    task: Task
    spec: DataSpec
    schema: dict
    device: torch.device
    augment_fn: Callable[[torch.Tensor], torch.Tensor] | None
    arrays: dict[str, np.ndarray]  # x/y of the train and val splits


def prepare(exp: ExperimentParams, experiment: str) -> Prepared:
    """Seed, build the model and the batches of `exp`; shared by train and tuning trials.
    In a torchrun worker (train.distributed: ddp) it joins the process group first and the
    training batches are this worker's shard."""
    from models import build_model
    from models.layers import init_weights
    from pipeline import augment, engine, tasks

    schema = datasets.load_schema(exp.dataset)
    device = engine.select_device(exp.device)
    shard = (distributed.rank(), distributed.world_size())
    if distributed.in_worker():
        device = distributed.setup(device)
    engine.seed_everything(exp.seed)
    engine.set_deterministic(exp.train.deterministic)
    spec = data_spec(schema, exp.train.binary_head, experiment)
    task = tasks.make_task(task_kind(exp.model.name, schema["task"]), exp.train, schema)
    try:
        model = build_model(exp.model.name, exp.model.model_dump(exclude={"name"}), spec)
        init_weights(model, exp.train.init)
    except (ValueError, FileNotFoundError) as err:
        raise PipelineError(f"experiments.{experiment}.model: {err}") from None
    model.to(device)
    on_disk = not in_memory(exp, device)
    train_x, train_y = datasets.load_split(exp.dataset, "train", on_disk)
    val_x, val_y = datasets.load_split(exp.dataset, "val", on_disk)
    excluded = excluded_classes(exp, schema, experiment)
    if excluded:
        train_x, train_y = without_classes(train_x, train_y, excluded)
        val_x, val_y = without_classes(val_x, val_y, excluded)
    weights = None
    if exp.train.sampler == "weighted":
        if schema["task"] != "classification":
            raise PipelineError("train.sampler: 'weighted' needs a classification dataset")
        counts = np.bincount(train_y, minlength=schema["num_classes"])
        weights = 1.0 / counts[train_y]
    augment_fn = augment.build(
        exp.train.augment, schema.get("normalization"), f"experiments.{experiment}.train.augment"
    )
    train = engine.Batches(
        train_x,
        train_y,
        exp.train.batch_size,
        device=device,
        shuffle=True,
        seed=exp.seed,
        weights=weights,
        transform=augment_fn,
        shard=shard,
        workers=exp.data.workers(),
    )
    val = engine.Batches(
        val_x,
        val_y,
        exp.evaluate.batch_size,
        device=device,
        shuffle=False,
        workers=exp.data.workers(),
    )
    if exp.train.deterministic:
        engine.check_deterministic(
            model, train, task, f"experiments.{experiment}.train.deterministic"
        )
    arrays = {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}
    return Prepared(model, train, val, task, spec, schema, device, augment_fn, arrays)


def excluded_classes(exp: ExperimentParams, schema: dict, experiment: str) -> list[int]:
    """The indices of `train.exclude_classes` in the dataset's classes; a clear error for a
    model that is not a VAE or a class the dataset does not have."""
    names = [str(c) for c in exp.train.exclude_classes]
    if not names:
        return []
    key = f"experiments.{experiment}.train.exclude_classes"
    if exp.model.name != "vae":
        raise PipelineError(f"{key}: for vae models (anomaly detection), not {exp.model.name}")
    if exp.model.conditional:
        raise PipelineError(f"{key}: needs an unconditional vae (model.conditional: false)")
    classes = [str(c) for c in schema.get("classes", [])]
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise PipelineError(
            f"{key}: {', '.join(unknown)} not among the classes of dataset {exp.dataset!r} "
            f"({', '.join(classes)})"
        )
    if len(set(names)) == len(classes):
        raise PipelineError(f"{key}: leaves no class to train on")
    return [classes.index(n) for n in names]


def without_classes(x, y: np.ndarray, excluded: list[int]):
    """The rows of (x, y) whose label is not in `excluded` (rows on disk are read)."""
    keep = np.flatnonzero(~np.isin(y, excluded))
    return (x.take(keep) if isinstance(x, NpyRows) else x[keep]), y[keep]


def in_memory(exp: ExperimentParams, device: torch.device, splits=("train", "val")) -> bool:
    """Whether the inputs of `splits` fit the memory budget (`data.in_memory_max_mb`): held
    in memory (on the device), else read from disk in batches by DataLoader workers."""
    return fits_memory(exp.dataset, exp.data, device, splits)


def fits_memory(dataset: str, data: DataParams, device: torch.device, splits) -> bool:
    """Whether the inputs of `splits` of `dataset` fit the budget of `data` on `device`."""
    import torch

    gpu_free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    return datasets.inputs_bytes(dataset, splits) <= datasets.memory_budget(data, gpu_free)


def resolved_experiment(params: Params, experiment: str) -> tuple[ExperimentParams, dict]:
    """The experiment as train runs it: defaults < experiment < tuned.yaml (when
    tune.use_tuned), and the tuned overrides that were applied."""
    exp = params.experiments[experiment]
    path = paths.tuned_file(experiment)
    if not exp.tune.use_tuned or not path.is_file():
        return exp, {}
    overrides = yaml.safe_load(path.read_text()) or {}
    if not overrides:
        return exp, {}
    return apply_overrides(exp, overrides, str(path)), overrides


def data_spec(schema: dict, binary: bool = False, experiment: str = ""):
    """What the model needs to know about the processed dataset (`binary`: two classes read
    from one sigmoid logit, train.binary_head)."""
    from models import DataSpec

    if binary and (schema["task"] != "classification" or schema.get("num_classes") != 2):
        classes = schema.get("num_classes")
        found = f"{classes} classes" if classes else f"a {schema['task']} dataset"
        raise PipelineError(
            f"experiments.{experiment}.train.binary_head: needs a two-class classification "
            f"dataset; {schema.get('dataset', 'this one')} has {found}: set binary_head: false"
        )

    language_model = schema["task"] == "language_model"
    return DataSpec(
        input_shape=tuple(schema["input_shape"]),
        num_classes=schema["vocab_size"] if language_model else schema.get("num_classes", 0),
        horizon=schema.get("horizon", 0),
        vocab_size=schema.get("vocab_size", 0),
        per_step=language_model,
        binary=binary,
    )


def load_trained_model(experiment: str, trained: bool = True):
    """The model train@<experiment> saved, rebuilt from its own config (CPU, eval mode).
    With `trained=False`: the same architecture freshly initialised (seeded), a baseline."""
    import torch

    from models import model_from_saved
    from pipeline.engine import load_tensors

    path = paths.model_file(experiment)
    if not path.is_file():
        raise PipelineError(f"{path} not found; run `dvc repro train@{experiment}` first")
    torch.manual_seed(0)
    return model_from_saved(load_tensors(path), load_weights=trained)


def load_judge(dataset: str):
    """The trained judge of `dataset` (CPU, eval mode); a clear error when there is none."""
    import json

    from models import build_model
    from pipeline.engine import load_tensors

    info_path = paths.judge_info_file(dataset)
    if not info_path.is_file():
        raise PipelineError(f"{info_path} not found; run `dvc repro judge@{dataset}` first")
    info = json.loads(info_path.read_text())
    if not info["applicable"]:
        raise PipelineError(f"dataset {dataset!r} has no judge: {info['reason']}")
    model = build_model("cnn", info["model"], data_spec(datasets.load_schema(dataset)))
    state = load_tensors(paths.judge_model_file(dataset))
    model.load_state_dict(state)
    return model.eval()
