"""MLflow runs end FINISHED, FAILED or KILLED, never RUNNING; secrets never reach the store."""

import json

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


@pytest.mark.slow
@pytest.mark.integration
def test_tracking_off_runs_the_pipeline_without_mlflow(tmp_path):
    """tracking.enabled: false: `dvc repro` with tuning (2 workers) writes models, metrics and
    the report, and nothing of MLflow: no store, no artifacts, no registry."""
    from tests.conftest import make_project, run, shipped_params, shrink

    raw = shrink(shipped_params())
    raw["experiments"] = {k: raw["experiments"][k] for k in ("mlp_digits", "cnn_digits")}
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
