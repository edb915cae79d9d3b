"""MLflow runs end FINISHED, FAILED or KILLED, never RUNNING; secrets never reach the store."""

import json
import os

import pytest

from pipeline import paths, tracking
from pipeline.params.training import TrackingParams


@pytest.fixture
def store(tmp_path):
    cfg = TrackingParams(
        uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "mlartifacts"),
        experiment_name="test",
    )
    from mlflow.tracking import MlflowClient

    return cfg, MlflowClient(cfg.uri)


def _only_run(client, name):
    exp = client.get_experiment_by_name("test")
    runs = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
    assert len(runs) == 1
    return runs[0]


def test_run_states_and_tags(store):
    cfg, client = store
    with tracking.stage_run(cfg, name="ok", tags={"stage": "train"}) as run:
        run.log_metrics({"val/loss": 1.0}, step=1)
        run.log_params({"train.lr": 0.1, "tracking.password": "hunter2", "api_token": "x"})
    with pytest.raises(ValueError), tracking.stage_run(cfg, name="boom", tags={}) as boom:
        boom.log_metrics({"train/loss": 2.0}, step=1)
        raise ValueError("bad")
    with pytest.raises(SystemExit), tracking.stage_run(cfg, name="killed", tags={}) as killed:
        for epoch in range(1, 4):
            killed.log_metrics({"train/loss": 1.0 / epoch}, step=epoch)
        raise SystemExit(143)
    with tracking.stage_run(cfg, name="child", tags={}, parent_run_id=run.run_id) as child:
        child.log_metrics({"test/accuracy": 0.5})

    ok = _only_run(client, "ok")
    assert ok.info.status == "FINISHED"
    assert ok.data.tags["pipeline.stage"] == "train"
    assert ok.data.metrics["val/loss"] == 1.0
    # secrets redacted
    assert ok.data.params == {"train.lr": "0.1", "tracking.password": "***", "api_token": "***"}
    assert _only_run(client, "boom").info.status == "FAILED"
    assert _only_run(client, "killed").info.status == "KILLED"
    # metrics are batched, and what was logged before a failure or a kill still arrives
    history = client.get_metric_history(_only_run(client, "killed").info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    assert _only_run(client, "boom").data.metrics == {"train/loss": 2.0}
    assert _only_run(client, "child").data.tags["mlflow.parentRunId"] == run.run_id


def test_unknown_parent_is_dropped_not_fatal(store):
    cfg, client = store
    with tracking.stage_run(cfg, name="orphan", tags={}, parent_run_id="0" * 32) as orphan:
        orphan.log_metrics({"test/accuracy": 0.5})
    assert "mlflow.parentRunId" not in _only_run(client, "orphan").data.tags


def test_system_metrics_are_logged_when_enabled(store, monkeypatch):
    import time

    cfg, client = store
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    with tracking.stage_run(cfg.model_copy(update={"system_metrics": True}), name="sys", tags={}):
        time.sleep(1.5)
    metrics = _only_run(client, "sys").data.metrics
    assert any(k.startswith("system/cpu") for k in metrics), sorted(metrics)
    assert any(k.startswith("system/system_memory") for k in metrics), sorted(metrics)


def test_system_metrics_by_default_on_train_and_tune_runs_only(store, monkeypatch):
    import time

    cfg, client = store
    assert cfg.system_metrics is None  # the default
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    for stage in ("train", "evaluate"):
        with tracking.stage_run(cfg, name=stage, tags={"stage": stage}):
            time.sleep(1.0)
    logged = {
        stage: any(k.startswith("system/") for k in _only_run(client, stage).data.metrics)
        for stage in ("train", "evaluate")
    }
    assert logged == {"train": True, "evaluate": False}


@pytest.mark.slow
@pytest.mark.integration
def test_tracking_off_runs_the_pipeline_without_mlflow(tmp_path):
    """tracking.enabled: false: `dvc repro` with tuning (2 workers) writes models, metrics and
    the report, and nothing of MLflow: no store, no artifacts, no registry."""
    from tests.conftest import make_project, run, shipped_params, shrink

    raw = shrink(shipped_params())
    raw["experiments"] = {k: raw["experiments"][k] for k in ("mlp_digits", "cnn_digits")}
    raw.pop("synthetic")  # its generator is not among these experiments
    raw["experiments"]["cnn_digits"]["tune"]["workers"] = 2
    raw["defaults"]["tracking"]["enabled"] = False
    project = make_project(tmp_path / "off", raw)
    out = run(["dvc", "repro"], project)

    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()
    for experiment in raw["experiments"]:
        metrics = json.loads((project / paths.metrics_file(experiment)).read_text())
        assert 0 <= metrics["test/accuracy"] <= 1
        train = json.loads((project / paths.train_summary_file(experiment)).read_text())
        assert train["mlflow_run_id"] is None and train["epochs_run"] == 2
    tuning = json.loads((project / paths.tuning_summary("cnn_digits")).read_text())
    assert tuning["states"]["COMPLETE"] + tuning["states"]["PRUNED"] == 2
    assert "champion" not in out.stderr
    assert "MLflow: off (tracking.enabled: false)" in (project / "reports/index.md").read_text()


def test_dvc_data_hash_follows_dvc_lock(tmp_path, monkeypatch):
    """The processed data's hash comes from dvc.lock; a rewritten lock is read again (each
    version is parsed once per process, so a stage asking several times pays once)."""
    monkeypatch.chdir(tmp_path)
    assert tracking.dvc_data_hash("digits") == "untracked"

    def write_lock(md5: str) -> None:
        out = {"path": str(paths.processed_dir("digits")), "md5": md5}
        lock = {"schema": "2.0", "stages": {"preprocess@digits": {"outs": [out]}}}
        paths.DVC_LOCK.write_text(json.dumps(lock))  # JSON is YAML

    write_lock("aaa.dir")
    assert tracking.dvc_data_hash("digits") == "aaa.dir"
    assert tracking.dvc_data_hash("sunspots") == "untracked"
    write_lock("bbbb.dir")  # another size: a new version even within the same mtime tick
    assert tracking.dvc_data_hash("digits") == "bbbb.dir"


def test_an_mlflow_error_fails_the_stage_and_its_run(store):
    """A call MLflow refuses (a param logged again with another value) is not waited for; the
    stage fails with MLflow's message when its run ends, and the run ends FAILED."""
    cfg, client = store
    refused = pytest.raises(tracking.TrackingError, match="MLflow: .*param")
    with refused, tracking.stage_run(cfg, name="refused", tags={}) as run:
        run.log_params({"lr": 0.1})
        run.log_params({"lr": 0.2})
        run.log_metrics({"after": 1.0})  # skipped: the run already failed
    refused = _only_run(client, "refused")
    assert refused.info.status == "FAILED"
    assert refused.data.params == {"lr": "0.1"} and "after" not in refused.data.metrics


# A stage process as `dvc repro` starts it: the writer is spawned first, MLflow is never
# imported by the stage itself; the file logged is gone before the run ends.
WRITER_STAGE = """
import json, os, sys, time
from pathlib import Path
from pipeline import tracking
from pipeline.params.training import TrackingParams

cfg = TrackingParams(**json.loads(sys.argv[1]))
tracking.start(cfg)
with tracking.stage_run(cfg, name=sys.argv[2], tags={"stage": "train"}) as run:
    run.log_params({"model.width": 8})
    run.log_metrics({"val/loss": 0.5}, step=1)
    figure = Path("figure.png")
    figure.write_bytes(b"png")
    run.log_artifact(figure, "plots")
    figure.unlink()
    print("RUN", run.run_id, flush=True)
    if sys.argv[2] == "killed":
        time.sleep(600)
print("MLFLOW IMPORTED", "mlflow" in sys.modules)
"""


def _stage_process(cfg, name: str, cwd):
    import subprocess
    import sys

    from benchmarks.common import venv_env

    code = ["-c", WRITER_STAGE, cfg.model_dump_json(), name]
    return subprocess.Popen(
        [sys.executable, *code], cwd=cwd, env=venv_env(), stdout=subprocess.PIPE, text=True
    )


def test_a_stage_process_logs_through_its_writer_without_importing_mlflow(store, tmp_path):
    cfg, client = store
    proc = _stage_process(cfg, "written", tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "MLFLOW IMPORTED False" in out, out
    run = _only_run(client, "written")
    assert run.info.status == "FINISHED" and run.info.run_id in out
    assert run.data.params == {"model.width": "8"} and run.data.metrics == {"val/loss": 0.5}
    assert run.data.tags["pipeline.pid"] == str(proc.pid)  # owned by the stage
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert artifacts == ["plots/figure.png"]


def test_a_stage_killed_with_sigkill_leaves_its_run_killed(store, tmp_path):
    """kill -9 of the stage alone: its writer reads the socket's end and ends the run KILLED,
    with what was logged before."""
    import signal
    import time

    cfg, client = store
    proc = _stage_process(cfg, "killed", tmp_path)
    line = proc.stdout.readline()
    assert line.startswith("RUN "), line
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while _only_run(client, "killed").info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    run = _only_run(client, "killed")
    assert run.info.status == "KILLED"
    assert run.data.metrics == {"val/loss": 0.5}


def test_mlflow_telemetry_is_off_unless_the_user_turns_it_on():
    """No network beyond the package indexes: the tracking modules turn MLflow's usage
    telemetry off in their process (and what it starts), unless the user set it."""
    import subprocess
    import sys

    code = "import os, pipeline.tracking; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert off.stdout.strip() == "true", off.stderr
    env["MLFLOW_DISABLE_TELEMETRY"] = "false"
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert on.stdout.strip() == "false", on.stderr


def test_a_dataset_logged_by_two_stages_at_once_is_retried_not_fatal(store, monkeypatch):
    """Two stages logging the same dataset at once (parallel stages, queued experiments): the
    second insert breaks MLflow's unique key; the stage tries again and finds the first's."""
    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException

    cfg, client = store
    real, calls = mlflow.log_input, []

    def raced(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # what the store raised when another process inserted it first
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                "datasets.name, datasets.digest"
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", raced)
    schema = {"dataset": "digits", "task": "classification", "counts": {"train": 4}}
    x, y = np.zeros((4, 2), np.float32), np.arange(4)
    with tracking.stage_run(cfg, name="raced", tags={}) as run:
        run.log_dataset(schema, "train", x, y, context="training")
    assert len(calls) == 2
    [logged] = _only_run(client, "raced").inputs.dataset_inputs
    assert logged.dataset.name == "digits/train"

    # anything else MLflow refuses is not retried
    def refused(*args, **kwargs):
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run not found")

    monkeypatch.setattr(mlflow, "log_input", refused)
    calls.clear()
    failed = pytest.raises(tracking.TrackingError, match="run not found")
    with failed, tracking.stage_run(cfg, name="other", tags={}) as run:
        run.log_dataset(schema, "train", x, y, context="training")
    assert len(calls) == 1


def test_orphaned_runs_closed_but_never_a_run_its_owner_just_finished(store):
    """A stage closes the RUNNING runs whose owner process is gone; a run its owner ended
    (then exited) between that stage's search and its check stays FINISHED."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from pipeline.tracking.context import owner_tags
    from pipeline.tracking.store import close_orphaned_runs

    cfg, client = store
    experiment_id = client.create_experiment("test")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid no process has now
    dead, just_finished, alive = (
        client.create_run(experiment_id, run_name=name, tags=owner_tags(pid)).info.run_id
        for name, pid in (("dead", gone.pid), ("finished", gone.pid), ("alive", os.getppid()))
    )

    class OwnerFinishesDuringSearch(MlflowClient):
        def search_runs(self, *args, **kwargs):
            found = super().search_runs(*args, **kwargs)
            self.set_terminated(just_finished, "FINISHED")  # and its owner exits
            return found

    closed = close_orphaned_runs(OwnerFinishesDuringSearch(cfg.uri), experiment_id)
    assert closed == [dead]
    status = {r: client.get_run(r).info.status for r in (dead, just_finished, alive)}
    assert status == {dead: "KILLED", just_finished: "FINISHED", alive: "RUNNING"}


def test_a_store_copied_from_another_checkout_is_refused_before_any_work(tmp_path, monkeypatch):
    """MLflow keeps the artifact folder as an absolute path: a copied mlflow.db would write
    the copy's models into the original checkout. The stage stops first, naming both folders."""
    import shutil

    from pipeline.errors import PipelineError
    from pipeline.tracking.context import check_artifact_root

    original, clone = tmp_path / "original", tmp_path / "clone"
    original.mkdir()
    clone.mkdir()
    cfg = TrackingParams(experiment_name="test")  # sqlite:///mlflow.db, artifacts: mlartifacts
    monkeypatch.chdir(original)
    with tracking.stage_run(cfg, name="first", tags={}) as first:
        first.log_metrics({"test/accuracy": 0.5})
    check_artifact_root(cfg.uri, cfg.experiment_name, cfg.artifact_location)  # its own: fine
    shutil.copy(original / "mlflow.db", clone / "mlflow.db")
    monkeypatch.chdir(clone)
    with pytest.raises(PipelineError) as err:
        check_artifact_root(cfg.uri, cfg.experiment_name, cfg.artifact_location)
    message = str(err.value)
    assert str(original / "mlartifacts") in message and str(clone / "mlartifacts") in message
    assert "copied from another checkout" in message
    # an artifact folder named on purpose outside the project is the user's choice
    check_artifact_root(cfg.uri, cfg.experiment_name, str(original / "mlartifacts"))
