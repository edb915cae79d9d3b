"""Each stage's MLflow run. This package is the only one that talks to MLflow: `store` holds
MLflow itself (the store, a stage's and a trial's runs, logged models), `writer` the process
that runs it beside a stage, `registry` the model registry's side (names, the champion alias,
reading a model back) and `serving` the registered model itself.

Every stage invocation is one MLflow run named `<experiment or dataset>/<stage>` with tags
`pipeline.stage`, `pipeline.experiment`/`pipeline.dataset`, the git commit and the DVC hash of
the data. Evaluate runs nest under their experiment's train run, so the two sit together.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import TrackingError
from pipeline.params.training import TrackingParams
from pipeline.tracking.context import REDACTED, dvc_data_hash, public_params, store_uri

__all__ = [
    "REDACTED",
    "TrackingError",
    "dvc_data_hash",
    "public_params",
    "stage_run",
    "start",
    "store_uri",
]

_started: dict = {}  # the writer `start` spawned, and the settings it opened


def start(tracking: TrackingParams | None, logs_model: bool = False) -> None:
    """Spawn the MLflow writer now, as the stage process starts, so that MLflow loads and the
    store opens (and with `logs_model`, what logging a model needs loads) while the stage
    loads torch and its data; the next `stage_run` with the same settings uses it. None or
    tracking off: nothing to start."""
    discard()
    if tracking is not None and tracking.enabled and "mlflow" not in sys.modules:
        logs_model = logs_model and tracking.log_model
        from pipeline.tracking.writer import Writer

        _started.update(tracking=tracking, writer=Writer.spawn(tracking, logs_model))


def discard() -> None:
    """Stop a writer `start` spawned that no run used."""
    if _started:
        _started.pop("writer").discard()
        _started.clear()


def _writer(tracking: TrackingParams):
    """The writer of the next run: the process `start` spawned with these settings, else
    MLflow in this process (a stage's `run` called from Python: a test, a benchmark, a
    notebook), as a writer started there would compete with the training that follows."""
    from pipeline.tracking.writer import Writer

    if _started and _started["tracking"] == tracking:
        writer = _started.pop("writer")
        _started.clear()
        return writer
    discard()
    return Writer.in_process()


class StageRun:
    """The stage's live MLflow run, written by its writer. Metrics are sent in batches (every
    few seconds and at the end); files are read when logged."""

    def __init__(self, writer):
        self._writer = writer
        self._run_id = None

    @property
    def run_id(self) -> str:
        """The run's id (waits for the writer to have started the run)."""
        if self._run_id is None:
            self._run_id = self._writer.call("run_id")
        return self._run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._writer.send("log_metrics", {k: float(v) for k, v in metrics.items()}, step)

    def log_params(self, params: dict[str, Any]) -> None:
        self._writer.send("log_params", params)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._writer.send("set_tags", tags)

    def log_dict(self, obj: dict, name: str) -> None:
        self._writer.send("log_dict", obj, name)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """A file the stage wrote, under `folder` in the run, as it is now. Figures go this
        way too, as the PNG `plots.save` wrote: `mlflow.log_figure` would render them again."""
        path = Path(path)
        self._writer.send("log_file", path.name, path.read_bytes(), folder)

    def log_dataset(self, schema: dict, split: str, x, y, context: str) -> None:
        """Record which data a run used (MLflow's dataset lineage): name, content hash, split
        sizes and the DVC hash of the processed data, visible in the run's Datasets panel.
        With the content hash known, only the arrays' shapes travel to the writer."""
        from pipeline.tracking.store import ArrayShape

        if schema.get("content_hash"):
            x, y = ArrayShape(x), ArrayShape(y)
        dvc_hash = dvc_data_hash(schema["dataset"])  # read here already, for the run's tags
        self._writer.send("log_dataset", schema, split, x, y, context, dvc_hash)

    def log_torch_model(self, model, input_example, registered_name: str | None = None):
        """See store.StageRun.log_torch_model: {"version": registered or None, "model_id"}."""
        return self._writer.call("log_torch_model", model, input_example, registered_name)

    def log_raw_input_model(
        self, model, saved_path: Path, prep_path: Path, registered_name: str | None = None
    ):
        """See store.StageRun.log_raw_input_model: {"version", "model_id"}."""
        return self._writer.call(
            "log_raw_input_model", model, saved_path, prep_path, registered_name
        )

    def log_test_metrics_on_train(self, train_run_id, metrics, registered, headline) -> None:
        """See store.StageRun.log_test_metrics_on_train."""
        self._writer.send("log_test_metrics_on_train", train_run_id, metrics, registered, headline)

    def experiment_ids(self, run_ids: list[str | None]) -> dict[str, str]:
        """See store.StageRun.experiment_ids."""
        return self._writer.call("experiment_ids", [r for r in run_ids if r])

    def share_grouped_view(self, columns: list[str]) -> str:
        """See store.StageRun.share_grouped_view: the experiment's id."""
        return self._writer.call("share_grouped_view", columns)

    def consider_champion(self, *args) -> dict:
        """registry.consider_champion, run by the writer; returns its decision."""
        return self._writer.call("consider_champion", *args)


class NullRun:
    """Stands in for StageRun when `tracking.enabled` is false: every method does nothing."""

    run_id = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@contextmanager
def stage_run(
    tracking: TrackingParams,
    *,
    name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
) -> Iterator[StageRun]:
    """Start an MLflow run for one stage invocation (or resume `resume_run_id` if this store
    has it: a resumed tuning study keeps its one parent run).

    The run ends FINISHED on success, FAILED on an error and KILLED on an interrupt or
    SIGTERM (the stage CLI turns SIGTERM into SystemExit), never staying RUNNING. An MLflow
    error fails the stage (TrackingError) once the block is done. With tracking off, a
    NullRun: MLflow is not even imported.
    """
    if not tracking.enabled:
        yield NullRun()
        return
    writer = _writer(tracking)
    writer.send(
        "start",
        tracking.model_dump(mode="json"),
        name=name,
        tags=tags,
        owner_pid=os.getpid(),
        parent_run_id=parent_run_id,
        resume_run_id=resume_run_id,
    )
    run = StageRun(writer)
    try:
        yield run
    except (KeyboardInterrupt, SystemExit):
        _end(run, writer, "KILLED")
        raise
    except BaseException:
        _end(run, writer, "FAILED")
        raise
    error = _end(run, writer, "FINISHED")
    if error:
        raise TrackingError(error if error.startswith("MLflow") else f"MLflow: {error}")


def _end(run: StageRun, writer, status: str) -> str | None:
    """End the run; its id stays readable. An MLflow error after the stage's own is printed
    (it must not hide the first); after success it is returned."""
    ended = writer.close(status)
    run._run_id = run._run_id or ended["run_id"]
    if ended["error"] and status != "FINISHED":
        print(f"mlflow: {ended['error']}", file=sys.stderr)
    return ended["error"]
