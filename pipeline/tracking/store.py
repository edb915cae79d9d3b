"""MLflow itself, in the process that writes to the store: opening the store, a stage's run
(`StageRun`, driven by the writer in writer.py), a tuning trial's run (`TrialRun`) and the
models logged on them."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import cores, paths
from pipeline.params.training import TrackingParams
from pipeline.shutdown import holding_signals
from pipeline.tracking.context import (
    TAG_PREFIX,
    dvc_data_hash,
    invocation,
    owner_tags,
    project_root,
    public_params,
    source_tags,
    store_uri,
)

# a unique key broken by a concurrent insert: SQLite's and PostgreSQL's words for it
DUPLICATE_KEY = re.compile(r"UNIQUE constraint failed|duplicate key value")
# the MLflow UI's shared views: experiment tags it reads for `?viewStateShareKey=<key>`
SHARED_VIEW_TAG = "mlflow.sharedViewState."
GROUPED_VIEW = "pipeline-runs"


def close_orphaned_runs(client, experiment_id: str) -> list[str]:
    """End KILLED the runs of this project on this machine left RUNNING by a process that is
    gone (killed with SIGKILL, or the machine went down); returns their ids."""
    mine = owner_tags()
    host, project = mine[TAG_PREFIX + "host"], mine[TAG_PREFIX + "project"]
    query = (
        "attributes.status = 'RUNNING' "
        f"and tags.`{TAG_PREFIX}host` = '{host}' and tags.`{TAG_PREFIX}project` = '{project}'"
    )
    closed = []
    for run in client.search_runs([experiment_id], filter_string=query, max_results=1000):
        pid = int(run.data.tags.get(TAG_PREFIX + "pid", "0"))
        if pid and pid != os.getpid() and not cores.alive(pid):
            # its owner may have ended the run and exited since the search (a short stage of
            # a queued experiment beside this one): read the status again now that the owner
            # is known gone, so a finished run is never marked KILLED
            if client.get_run(run.info.run_id).info.status != "RUNNING":
                continue
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


class MetricBuffer:
    """Metrics kept in memory and sent with `log_batch` (up to 1000 values a call) at most every
    `seconds` and on `flush`. One tracking call costs 3-20 ms on SQLite, more than a small
    model's epoch; MLflow's own async queue costs up to a second to shut down at run end."""

    def __init__(self, client, run_id: str, seconds: float):
        self._client, self.run_id, self.seconds = client, run_id, seconds
        self._metrics: list = []
        self._sent_at = time.monotonic()

    def add(self, metrics: dict[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if time.monotonic() - self._sent_at >= self.seconds:
            self.flush()

    @holding_signals
    def flush(self) -> None:
        for start in range(0, len(self._metrics), 1000):  # MLflow's batch limit
            self._client.log_batch(self.run_id, metrics=self._metrics[start : start + 1000])
        self._metrics = []
        self._sent_at = time.monotonic()


class ArrayShape:
    """An array's shape and dtype, sent to the writer in place of the array when the dataset's
    content hash is known: MLflow then reads nothing but the shape and dtype."""

    def __init__(self, array):
        self.shape, self.dtype = tuple(array.shape), str(array.dtype)

    def stand_in(self):
        """An array of this shape and dtype that holds one element (every stride is 0)."""
        import numpy as np

        one = np.zeros(1, dtype=self.dtype)
        return np.lib.stride_tricks.as_strided(one, self.shape, (0,) * len(self.shape))


def open_store(tracking: TrackingParams):
    """Import MLflow and open the store: its experiment (created on first use), with the runs
    that killed processes of this project left RUNNING marked KILLED. Returns (mlflow, the
    experiment's id)."""
    import mlflow

    uri = store_uri(tracking.uri)
    mlflow.set_tracking_uri(uri)
    with _first_use_lock(uri):
        experiment_id = _experiment_id(mlflow, tracking)
    orphans = close_orphaned_runs(mlflow.MlflowClient(), experiment_id)
    if orphans:
        print(f"mlflow: {len(orphans)} run(s) of a killed process marked KILLED", file=sys.stderr)
    return mlflow, experiment_id


def warm_model_logging() -> None:
    """Load what logging a model needs (torch, MLflow's flavours, the served model's code).
    The writer does this while its stage imports its own libraries: no more, since whatever
    it still does once the stage trains competes with the training threads for the cores."""
    import mlflow.pyfunc  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    import torch  # noqa: F401

    import models  # noqa: F401
    import pipeline.tracking.serving  # noqa: F401


class StageRun:
    """A live MLflow run; metrics go out in batches (every few seconds and at the end)."""

    FLUSH_SECONDS = 5.0  # how stale the MLflow UI may be while a stage runs

    def __init__(self, mlflow, run_id: str):
        self._mlflow = mlflow
        self.run_id = run_id
        self.metrics = MetricBuffer(mlflow.MlflowClient(), run_id, self.FLUSH_SECONDS)

    @classmethod
    def start(
        cls,
        tracking: TrackingParams,
        *,
        name: str,
        tags: dict[str, str],
        owner_pid: int,
        parent_run_id: str | None = None,
        resume_run_id: str | None = None,
    ) -> StageRun:
        """Start the run `name` (or resume `resume_run_id` if this store has it: a resumed
        tuning study keeps its one parent run), owned by the stage process `owner_pid`."""
        mlflow, experiment_id = open_store(tracking)
        all_tags = {TAG_PREFIX + k: v for k, v in tags.items()} | owner_tags(owner_pid)
        all_tags |= source_tags()
        if os.environ.get("DVC_EXP_NAME"):  # run by `dvc exp run`: which experiment
            all_tags[TAG_PREFIX + "dvc_exp"] = os.environ["DVC_EXP_NAME"]
        if group := invocation(owner_pid):
            all_tags[TAG_PREFIX + "invocation"] = group
        resume = _existing_run(mlflow, resume_run_id)
        if resume is None:
            parent = _existing_run(mlflow, parent_run_id)
            if parent:
                all_tags["mlflow.parentRunId"] = parent
            # created by the client, then made the active run: `mlflow.start_run` would resolve
            # its default tags itself, importing GitPython for the commit (0.3-0.4 s a stage)
            created = mlflow.MlflowClient().create_run(experiment_id, run_name=name, tags=all_tags)
            resume, all_tags = created.info.run_id, {}
        system = tracking.system_metrics
        if system is None:  # the long runs: where CPU/GPU use is worth a look
            system = tags.get("stage") in ("train", "tune")
        # its monitor says at INFO that it starts, skips GPU metrics and stops: four lines in
        # the output of every stage that uses it; its warnings still print
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        run = mlflow.start_run(run_id=resume, tags=all_tags, log_system_metrics=system)
        return cls(mlflow, run.info.run_id)

    @holding_signals
    def end(self, status: str) -> None:
        """Send the buffered metrics and end the run FINISHED, FAILED or KILLED. After a
        failure a store error while sending must not hide the first one."""
        if status == "FINISHED":
            self.metrics.flush()
        else:
            try:
                self.metrics.flush()
            except Exception as err:  # noqa: BLE001
                print(f"mlflow: could not send the last metrics: {err}", file=sys.stderr)
        self._mlflow.end_run(status)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.add(metrics, step)

    @holding_signals
    def log_params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params(public_params(params))

    @holding_signals
    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    @holding_signals
    def log_dict(self, obj: dict, name: str) -> None:
        self._mlflow.log_dict(obj, name)

    @holding_signals
    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """A file the stage wrote, under `folder` in the run. Figures go this way too, as the
        PNG `plots.save` wrote: `mlflow.log_figure` would render each figure a second time."""
        self._mlflow.log_artifact(str(path), folder)

    def log_file(self, name: str, data: bytes, folder: str | None = None) -> None:
        """`log_artifact` of a file's bytes as read when the stage logged it (the stage may
        have moved or deleted the file since)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.log_artifact(path, folder)

    @holding_signals
    def log_test_metrics_on_train(
        self,
        train_run_id: str | None,
        metrics: dict[str, float],
        registered: dict | None,
        headline: dict[str, str],
    ) -> None:
        """The test metrics on the train run too: it holds the params and the model, so one
        runs table sorts the models by test metric. They are linked to the model logged there
        (MLflow's model_id: the logged model's page lists them), and the `headline` (main
        metric -> value with interval) tags the registered version, a column on the Models
        page."""
        from mlflow.entities import Metric

        if _existing_run(self._mlflow, train_run_id) is None:
            return  # trained with another store, or tracking was off then
        client = self._mlflow.MlflowClient()
        model_id = (registered or {}).get("model_id")
        now = int(time.time() * 1000)
        client.log_batch(
            train_run_id,
            [
                Metric(k, float(v), now, 0, model_id=model_id, run_id=train_run_id)
                for k, v in metrics.items()
            ],
        )
        if registered and registered.get("version"):
            for key, value in headline.items():
                client.set_model_version_tag(registered["name"], registered["version"], key, value)

    @holding_signals
    def share_grouped_view(self, columns: list[str]) -> str:
        """Save the MLflow UI view of this run's experiment that the report links to: runs
        grouped by pipeline invocation (one group per `dvc repro`), with the `columns` metrics
        shown. The UI reads a shared view from an experiment tag (its "share view" button
        writes the same); returns the experiment's id."""
        experiment_id = self._mlflow.get_run(self.run_id).info.experiment_id
        state = {
            "groupBy": {
                "aggregateFunction": "average",
                "groupByKeys": [{"mode": "tag", "groupByData": TAG_PREFIX + "invocation"}],
            },
            "selectedColumns": [f"metrics.`{c}`" for c in columns],
        }
        self._mlflow.MlflowClient().set_experiment_tag(
            experiment_id, SHARED_VIEW_TAG + GROUPED_VIEW, json.dumps(state)
        )
        return experiment_id

    def experiment_ids(self, run_ids: list[str]) -> dict[str, str]:
        """{run id: its MLflow experiment's id} of the runs this store holds (the report links
        to them in the MLflow UI)."""
        client = self._mlflow.MlflowClient()
        found = {}
        for run_id in run_ids:
            try:
                found[run_id] = client.get_run(run_id).info.experiment_id
            except Exception:  # noqa: BLE001 - not in this store: no link
                continue
        return found

    def consider_champion(self, *args) -> dict:
        """registry.consider_champion, from the process that writes to the store."""
        from pipeline.tracking.registry import consider_champion

        return consider_champion(*args)

    @holding_signals
    def log_dataset(
        self, schema: dict, split: str, x, y, context: str, dvc_hash: str | None = None
    ) -> None:
        """Record which data a run used (MLflow's dataset lineage): name, content hash, split
        sizes and the DVC hash of the processed data (`dvc_hash`, else read from dvc.lock),
        visible in the run's Datasets panel."""
        import mlflow.data

        x, y = (a.stand_in() if isinstance(a, ArrayShape) else a for a in (x, y))
        with warnings.catch_warnings():  # a local folder matches two equivalent source types
            warnings.filterwarnings("ignore", message="The specified dataset source")
            dataset = mlflow.data.from_numpy(
                x,
                targets=y,
                source=str(paths.processed_dir(schema["dataset"])),
                name=f"{schema['dataset']}/{split}",
                digest=schema.get("content_hash", "")[:16] or None,  # None: MLflow computes one
            )
        tags = {
            "content_hash": schema.get("content_hash", "unknown"),
            "dvc_hash": dvc_hash or dvc_data_hash(schema["dataset"]),
            "task": schema["task"],
            "split_sizes": json.dumps(schema["counts"]),
        }
        for attempt in range(3):
            try:
                self._mlflow.log_input(dataset, context=context, tags=tags)
                return
            except Exception as err:
                # two stages logging the same dataset at once (parallel stages, queued
                # experiments): MLflow looks the dataset up, then inserts it, and the second
                # insert breaks the store's unique key; the next try finds the first's row
                if attempt == 2 or not DUPLICATE_KEY.search(str(err)):
                    raise

    @holding_signals
    def log_torch_model(self, model, input_example, registered_name: str | None = None) -> dict:
        """The model with a signature and input example (numpy), loadable by mlflow.pytorch;
        with `registered_name`, a new version of that registered model. For the
        models that take the model's own tensors (language and generative models)."""
        import torch
        from mlflow.models import infer_signature

        model.eval()
        with torch.no_grad():
            output = model(torch.as_tensor(input_example))
        if isinstance(output, tuple):  # e.g. a VAE's (reconstruction logits, mu, logvar)
            model, output = _FirstOutput(model), output[0]  # pyfunc serves one tensor
        output = output.cpu().numpy()
        with warnings.catch_warnings():
            # torch.export's note on RNN weight views is noise for the user
            warnings.filterwarnings("ignore", message="The tensor attributes")
            info = self._mlflow.pytorch.log_model(
                model,
                name="model",
                signature=infer_signature(input_example, output),
                input_example=input_example,
                # naming the requirement skips MLflow's slow import-based inference
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                registered_model_name=registered_name,
            )
        return _logged(info)

    @holding_signals
    def log_raw_input_model(
        self, model, saved_path: Path, prep_path: Path, registered_name: str | None = None
    ) -> dict:
        """The registered model of a predictive experiment: a pyfunc (tracking/serving.py)
        that takes raw rows and carries the weights at `saved_path` and the fitted
        preprocessor at `prep_path`. Its signature names the raw columns and types; its
        input example is raw training rows. Returns the registered version, if any, and the
        logged model's id."""
        import tempfile
        from importlib.metadata import version

        import numpy as np
        import pandas as pd
        import PIL
        import torch
        from mlflow.models import ModelSignature, infer_signature
        from mlflow.types import ColSpec, Schema, TensorSpec

        from pipeline.data import preprocessing
        from pipeline.tracking.serving import RawInputModel

        prep = preprocessing.load(prep_path)
        example = prep.example_input()
        columns = prep.raw_columns()
        if columns is None:
            inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *prep.shape))])
        else:
            inputs = Schema([ColSpec(kind, name) for name, kind in columns])
        probe = RawInputModel()  # the served path, run once on the example
        probe.prep, probe.model, probe.device = prep, model.eval(), torch.device("cpu")
        # the outputs' schema, inferred alone: the inputs' is declared above, from the
        # training file's column types
        outputs = infer_signature(probe.predict(None, example)).inputs
        with tempfile.TemporaryDirectory() as code, _quiet_cloudpickle_note():
            code_paths = _serving_code(Path(code))
            info = self._mlflow.pyfunc.log_model(
                name="model",
                python_model=RawInputModel(),
                artifacts={"weights": str(saved_path), "preprocessor": str(prep_path)},
                code_paths=code_paths,
                signature=ModelSignature(inputs=inputs, outputs=outputs),
                input_example=example,
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"numpy=={np.__version__}",
                    f"pandas=={pd.__version__}",
                    f"pillow=={PIL.__version__}",
                    # models/configs.py declares the families' constraints with it
                    f"annotated-types=={version('annotated-types')}",
                ],
                registered_model_name=registered_name,
                metadata={**prep.describe(), "task": prep.kind_of_task()},
                model_config={"predict_device": "auto"},  # load_model(model_config=...) overrides
            )
        return _logged(info)


def _logged(info) -> dict:
    """The registered version (None without a registry) and MLflow's id of the logged model,
    to which evaluate attaches the test metrics."""
    version = getattr(info, "registered_model_version", None)
    return {"version": None if version is None else str(version), "model_id": info.model_id}


@contextmanager
def _quiet_cloudpickle_note() -> Iterator[None]:
    """MLflow warns that a pickled python_model may run code when loaded. Ours is an instance
    of the shipped RawInputModel class with no state: loading it imports that class, and the
    weights and preprocessing travel as tensors and JSON."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _serving_code(folder: Path) -> list[str]:
    """Copies of the modules the registered model runs (its pyfunc, the preprocessing and
    the model library), shipped inside it: the model loads without this project's folder."""
    import shutil

    import models
    import pipeline

    here = Path(pipeline.__file__).parent
    for sub in ("data", "tracking"):
        (folder / "pipeline" / sub).mkdir(parents=True)
    for name in ("__init__.py", "errors.py", "data/__init__.py", "data/preprocessing.py"):
        shutil.copy2(here / name, folder / "pipeline" / name)
    shutil.copy2(here / "tracking" / "serving.py", folder / "pipeline" / "tracking" / "serving.py")
    # the served model runs serving.py alone: its package is empty there (this module, with
    # the stages' run logging, needs the whole project)
    (folder / "pipeline" / "tracking" / "__init__.py").write_text(
        '"""The registered model\'s copy: serving.py only."""\n'
    )
    shutil.copytree(
        Path(models.__file__).parent,
        folder / "models",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return [str(folder / "pipeline"), str(folder / "models")]


def _FirstOutput(model):
    """Wrap a model whose forward returns a tuple so the logged model returns its first item."""
    from torch import nn

    class FirstOutput(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)[0]

    return FirstOutput(model).eval()


class TrialRun:
    """An MLflow run nested under a tuning study's parent run, for one Optuna trial.

    Written through MlflowClient rather than the fluent API, so worker processes on any machine
    can add children to one parent. Per-epoch metrics are buffered and sent in one batch when
    the trial ends: no tracking call inside the training loop.
    """

    def __init__(self, client, run_id: str):
        self._client = client
        self.run_id = run_id
        self.metrics = MetricBuffer(client, run_id, seconds=float("inf"))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.metrics.add(metrics, step)

    @holding_signals
    def end(self, state: str, values: dict[str, float] | None = None) -> None:
        """Send the buffered metrics, tag the Optuna state, close the run (FAIL -> FAILED)."""
        if values:
            self.log_metrics({f"objective/{k}": v for k, v in values.items()})
        self.metrics.flush()
        self._client.set_tag(self.run_id, TAG_PREFIX + "trial_state", state)
        self._client.set_terminated(self.run_id, "FAILED" if state == "FAIL" else "FINISHED")


def trial_run(
    tracking: TrackingParams, parent_run_id: str, name: str, tags: dict, params: dict
) -> TrialRun:
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(store_uri(tracking.uri))
    parent = client.get_run(parent_run_id)
    all_tags = {TAG_PREFIX + k: str(v) for k, v in tags.items()} | owner_tags()
    all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(parent.info.experiment_id, run_name=name, tags=all_tags)
    public = public_params(params)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in public.items()])
    return TrialRun(client, run.info.run_id)


def connect(tracking: TrackingParams, run_id: str) -> None:
    """Open the tracking store and read `run_id` once (a worker does this before its first
    trial, so that trial's time is not spent setting up the store)."""
    from mlflow import MlflowClient

    MlflowClient(store_uri(tracking.uri)).get_run(run_id)


def close_lost_trial_runs(tracking: TrackingParams, run_ids: list[str]) -> int:
    """Mark FAILED the trial runs a killed worker left RUNNING; returns how many."""
    if not run_ids:
        return 0
    from mlflow import MlflowClient

    client = MlflowClient(store_uri(tracking.uri))
    closed = 0
    for run_id in run_ids:
        try:
            status = client.get_run(run_id).info.status
        except Exception:
            continue  # not in this store
        if status == "RUNNING":
            client.set_tag(run_id, TAG_PREFIX + "trial_state", "FAIL")
            client.set_terminated(run_id, "FAILED")
            closed += 1
    return closed


@contextmanager
def _first_use_lock(uri: str) -> Iterator[None]:
    """MLflow creates (and migrates) a SQLite store's schema on a process's first use, and
    processes doing that at once on a fresh file can fail; a file lock next to the database
    lets one at a time through. Server URIs need none."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        yield


def _existing_run(mlflow, run_id: str | None) -> str | None:
    """`run_id` if this store has it (a parent from another store or a wiped db is dropped)."""
    if run_id is None:
        return None
    try:
        mlflow.get_run(run_id)
    except Exception:
        return None
    return run_id


def _experiment_id(mlflow, tracking: TrackingParams) -> str:
    found = mlflow.get_experiment_by_name(tracking.experiment_name)
    if found is not None:
        return found.experiment_id
    location = tracking.artifact_location
    if "://" not in location:  # a local folder, relative to the project
        location = (project_root() / location).resolve().as_uri()
    try:
        return mlflow.create_experiment(tracking.experiment_name, artifact_location=location)
    except Exception:
        # another stage process created it first
        found = mlflow.get_experiment_by_name(tracking.experiment_name)
        if found is None:
            raise
        return found.experiment_id
