"""Prefect flows orchestrate the real DVC pipeline: same outputs as `dvc repro`, skips, failures."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline import paths
from tests.conftest import free_port, make_project, run, start_mlflow_server, write_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TINY = {
    "datasets": {"digits": {"source": "sklearn_digits"}},
    "defaults": {  # every key dvc.yaml lists as a param must exist
        "seed": 42,
        "device": "cpu",
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "train": {"epochs": 2},
        "evaluate": {"batch_size": 512},
        "tracking": {"log_model": False},
        "tune": {"enabled": False},
    },
    "experiments": {"mlp_digits": {"dataset": "digits"}},
}


@pytest.fixture(scope="module")
def prefect_server():
    """One temporary Prefect server (SQLite) for the module: its start-up is paid once."""
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry writes
        with prefect_test_harness(server_startup_timeout=120):
            yield


def lock_outs(project) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out.get("md5")
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def task_run_count(flow_state, name: str) -> int:
    """How many times Prefect ran the task `name` in that flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=flow_run)
    [task_run] = [r for r in runs if r.name == name]
    return task_run.run_count


def test_flow_matches_dvc_repro_and_a_second_run_skips_everything(prefect_server, tmp_path):
    from pipeline.flows import pipeline_flow, stage_order

    by_flow = make_project(tmp_path / "flow", TINY)
    by_dvc = make_project(tmp_path / "dvc", TINY)
    order = stage_order(by_flow)
    assert order.index("preprocess@digits") < order.index("train@mlp_digits")
    assert order.index("tune@mlp_digits") < order.index("train@mlp_digits")
    assert order[-1] == "report"

    results = pipeline_flow(root=str(by_flow))
    assert [r["stage"] for r in results] == order and all(r["ran"] for r in results)
    run(["dvc", "repro"], by_dvc)
    flow_lock, dvc_lock = lock_outs(by_flow), lock_outs(by_dvc)
    assert flow_lock.keys() == dvc_lock.keys()
    for path in ("data/raw/digits", "data/processed/digits", "artifacts/mlp_digits/tuned.yaml"):
        assert flow_lock[path] == dvc_lock[path]  # the same bytes, recorded the same way
    metrics = [
        json.loads((p / paths.metrics_file("mlp_digits")).read_text()) for p in (by_flow, by_dvc)
    ]
    assert metrics[0] == pytest.approx(metrics[1])  # seeded training: the same model

    again = pipeline_flow(root=str(by_flow))
    assert not any(r["ran"] for r in again)
    assert "up to date" in run(["dvc", "status"], by_flow).stdout


def test_a_failing_stage_fails_the_flow_with_its_message_and_commits_nothing(
    prefect_server, tmp_path
):
    from pipeline.flows import pipeline_flow

    raw = json.loads(json.dumps(TINY))
    raw["datasets"]["table"] = {"source": "table", "path": "missing.csv", "target": "y"}
    project = make_project(tmp_path / "p", raw)
    state = pipeline_flow(
        root=str(project), targets=["ingest@table"], retries=1, retry_delay=0.1, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(RuntimeError, match=r"(?s)ingest@table failed on bad input .*missing\.csv"):
        state.result()
    assert not (project / "dvc.lock").exists()  # nothing recorded
    assert not (project / paths.raw_dir("table")).exists()  # nothing written


def test_a_stage_retried_after_a_transient_failure_trains_once(
    prefect_server, tmp_path, monkeypatch
):
    """train@ fails while the tracking server is down, is retried once it is up, and leaves
    one MLflow training run and one set of outputs."""
    import threading

    from mlflow import MlflowClient

    from pipeline.flows import pipeline_flow

    project = make_project(tmp_path / "p", TINY)
    run(["dvc", "repro", "tune@mlp_digits"], project)  # data and tuning on the local store
    port = free_port()
    raw = json.loads(json.dumps(TINY))
    raw["defaults"]["tracking"]["uri"] = f"http://127.0.0.1:{port}"  # not up yet
    write_params(project / "params.yaml", raw)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast while it is down
    server_root = tmp_path / "server"
    server_root.mkdir()
    started: list = []
    # up about 20 s from now: the first attempts of train@ find no server
    timer = threading.Timer(12.0, lambda: started.append(start_mlflow_server(server_root, port)))
    timer.start()
    try:
        state = pipeline_flow(
            root=str(project),
            targets=["train@mlp_digits"],
            retries=4,
            retry_delay=4.0,
            return_state=True,
        )
    finally:
        timer.join()
    try:
        assert state.is_completed(), state.message
        results = state.result()
        assert results[-1] == {"stage": "train@mlp_digits", "ran": True}
        assert task_run_count(state, "train@mlp_digits") >= 2  # it failed, then was retried
        client = MlflowClient(f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name("dl-pipeline")
        runs = client.search_runs([experiment.experiment_id])
        assert [r.info.run_name for r in runs] == ["mlp_digits/train"]
        assert runs[0].info.status == "FINISHED"
        assert (project / paths.model_file("mlp_digits")).is_file()
        lock = yaml.safe_load((project / "dvc.lock").read_text())
        assert "train@mlp_digits" in lock["stages"]
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(timeout=30)
