"""Prefect flows orchestrate the real DVC pipeline: same outputs as `dvc repro`, skips,
failures, retraining with champion promotion, tuning fanned out to extra workers (as tasks and
as flow runs of a served deployment)."""

from __future__ import annotations

import json
import logging.handlers
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import yaml

from benchmarks.common import read_test_metrics
from pipeline import cores, paths
from tests.conftest import (
    TINY,
    free_port,
    interrupt,
    make_project,
    run,
    start_mlflow_server,
    venv_env,
    write_params,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SERVER_LOGS: list = []  # the module's Prefect server log (prefect_server adds it), checked last


def lock_outs(project) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out.get("md5")
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def task_runs(flow_state) -> list:
    """The task runs the server recorded for that flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=flow_run)


def task_run_count(flow_state, name: str) -> int:
    """How many times Prefect ran the task `name` in that flow run."""
    [task_run] = [r for r in task_runs(flow_state) if r.name == name]
    return task_run.run_count


def test_flow_matches_dvc_repro_and_a_second_run_skips_everything(prefect_server, tmp_path):
    from pipeline.flows import pipeline_flow, stage_order

    by_flow = make_project(tmp_path / "flow", TINY)
    by_dvc = make_project(tmp_path / "dvc", TINY)
    order = stage_order(by_flow)
    assert order.index("preprocess@digits") < order.index("train@mlp_digits")
    assert order.index("tune@mlp_digits") < order.index("train@mlp_digits")
    assert order[-1] == "report"

    # two stages at once (as `python -m pipeline run -j 2`) against sequential `dvc repro`
    # with each stage on the same number of threads (PyTorch's CPU sums depend on it)
    # what DVC's outputs say past the logger's filters (a capture of the process's stderr
    # would leave Prefect's log handler, made during it, writing to a closed file after)
    said = logging.handlers.BufferingHandler(capacity=10_000)
    logging.getLogger("dvc.output").addHandler(said)
    try:
        results = pipeline_flow(root=str(by_flow), jobs=2)
    finally:
        logging.getLogger("dvc.output").removeHandler(said)
    assert [r["stage"] for r in results] == order and all(r["ran"] for r in results)
    pinned = {**venv_env(), **cores.for_children(2)}
    proc = subprocess.run(
        ["dvc", "repro"], cwd=by_dvc, env=pinned, check=True, capture_output=True, text=True
    )
    # untuned, the experiment's tune@ outputs are folders holding a file that says so: neither
    # DVC nor the flow warns of an empty output
    assert "is empty" not in proc.stdout + proc.stderr
    assert not [r for r in said.buffer if "is empty" in r.getMessage()]
    flow_lock, dvc_lock = lock_outs(by_flow), lock_outs(by_dvc)
    assert flow_lock.keys() == dvc_lock.keys()
    deterministic = ["data/raw/digits", "data/processed/digits", "artifacts/mlp_digits/tuning"]
    deterministic += ["artifacts/mlp_digits/model.pt", "artifacts/mlp_digits/checkpoint.pt"]
    for path in deterministic:
        assert flow_lock[path] == dvc_lock[path], path  # the same bytes, recorded the same way
    metrics = [read_test_metrics(p, "mlp_digits") for p in (by_flow, by_dvc)]
    assert metrics[0] == pytest.approx(metrics[1])  # seeded training: the same model

    # with a concurrency limit on `gpu`, the GPU stages' task runs carry that tag
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="gpu", concurrency_limit=1)
    try:
        state = pipeline_flow(root=str(by_flow), return_state=True)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag("gpu")
    assert not any(r["ran"] for r in state.result())
    assert "up to date" in run(["dvc", "status"], by_flow).stdout
    tags = {r.name: r.tags for r in task_runs(state)}
    assert tags["train@mlp_digits"] == tags["tune@mlp_digits"] == ["gpu"]
    assert tags["preprocess@digits"] == tags["report"] == []


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


def test_a_stage_past_its_timeout_is_stopped_and_fails_the_flow(prefect_server, tmp_path):
    from pipeline.flows import pipeline_flow

    project = make_project(tmp_path / "p", TINY)
    state = pipeline_flow(
        root=str(project),
        targets=["ingest@digits"],
        retries=0,
        stage_timeout=0.2,  # ingest imports MLflow and opens its store: over 0.2 s
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(RuntimeError, match=r"ingest@digits: still running after 0.2 s; stopped"):
        state.result()
    assert not (project / "dvc.lock").exists()
    assert not (project / paths.raw_dir("digits")).exists()


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


# ---- retraining -------------------------------------------------------------------------------


def digits_table(path, rows: int, noisy: float = 0.0, seed: int = 0) -> None:
    """`rows` of scikit-learn's digits as a CSV (64 pixel columns and `digit`), a `noisy`
    fraction of them with random labels: the "new data" a nightly retrain finds."""
    import pandas as pd
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(y))[:rows]
    x, y = x[keep], y[keep].copy()
    flip = rng.random(len(y)) < noisy
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    table = pd.DataFrame(x, columns=[f"p{i}" for i in range(64)])
    table["digit"] = y
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)


RETRAIN = {
    "datasets": {
        "scans": {
            "source": "table",
            "path": "incoming/digits.csv",
            "target": "digit",
            "task": "classification",
        }
    },
    "defaults": {
        **TINY["defaults"],
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "train": {"epochs": 30, "optimizer": {"name": "adamw", "lr": 0.01}},
        "tracking": {"log_model": True},
    },
    "experiments": {"mlp_scans": {"dataset": "scans"}},
}


def test_retrain_flow_promotes_only_a_better_model(prefect_server, tmp_path):
    """New rows land in the source table between runs (DVC cannot see them: the flow forces
    ingest). Clean small data -> v1 champion; noisy labels -> v2 kept; more clean data -> v3
    promoted; the same data again -> nothing after ingest runs."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from pipeline.flows import retrain_flow

    project = make_project(tmp_path / "p", RETRAIN)
    table = project / "incoming" / "digits.csv"
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    name = "dl-pipeline.mlp_scans"
    rounds = [
        (dict(rows=400), True, "1"),  # the first model: no champion yet
        (dict(rows=400, noisy=0.6), False, "1"),  # worse: v2 is registered, not promoted
        (dict(rows=1797), True, "3"),  # more clean data: better by more than its interval
    ]
    values = []
    for table_args, promoted, champion in rounds:
        digits_table(table, **table_args)
        result = retrain_flow(root=str(project), retries=0)
        decision = result["decisions"]["mlp_scans"]
        values.append(decision["value"])
        assert decision["registry"]["promoted"] is promoted, decision
        assert str(client.get_model_version_by_alias(name, "champion").version) == champion
    assert values[1] < values[0] < values[2]
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")) == [
        "1",
        "2",
        "3",
    ]

    # the same data again: ingest is forced, DVC finds its output unchanged and stops there
    again = retrain_flow(root=str(project), retries=0)
    assert [r["stage"] for r in again["stages"] if r["ran"]] == ["ingest@scans"]
    assert again["decisions"] == {}
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain"]))
        )
    texts = [a.data for a in artifacts]
    assert any("promoted v3" in t and "| mlp_scans |" in t for t in texts)
    assert any("kept v2" in t for t in texts)
    assert any("1 of 8 stages ran: ingest@scans" in t for t in texts)


# ---- tuning -----------------------------------------------------------------------------------

TUNED = json.loads(json.dumps(TINY))
TUNED["experiments"]["mlp_digits"]["tune"] = {
    "enabled": True,
    "n_trials": 8,
    "epochs": 20,  # ~2 s a trial: the extra worker joins while most trials are still to run
    "sampler": "random",
    "pruner": "none",
    "space": {"train.optimizer.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
}


def study_trials(project, experiment="mlp_digits"):
    import optuna

    from pipeline.config import load_params
    from pipeline.tuning.studies import open_storage, study_name

    exp = load_params(project / "params.yaml").experiments[experiment]
    journal = project / paths.study_journal(experiment)
    study = optuna.load_study(
        study_name=study_name(experiment, exp), storage=open_storage(str(journal), 60)
    )
    return study.get_trials()


def test_tune_flow_adds_local_workers_to_the_stage_study(prefect_server, tmp_path):
    from pipeline.flows import tune_flow

    project = make_project(tmp_path / "p", TUNED)
    result = tune_flow(experiment="mlp_digits", workers=1, root=str(project), retries=0)
    assert result["stage"] == {"stage": "tune@mlp_digits", "ran": True}
    [extra] = result["workers"]
    trials = study_trials(project)
    assert len(trials) == 8 and sorted(t.number for t in trials) == list(range(8))
    assert all(t.state.name == "COMPLETE" for t in trials)
    by_worker = {t.user_attrs["worker_pid"] for t in trials}
    assert 1 <= extra < 8 and len(by_worker) == 2  # the stage's worker and the flow's
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert "tune@mlp_digits" in lock["stages"]  # DVC recorded the stage's outputs
    assert "lr" in (project / paths.tuned_file("mlp_digits")).read_text()

    again = tune_flow(experiment="mlp_digits", workers=1, root=str(project), retries=0)
    assert again == {"stage": {"stage": "tune@mlp_digits", "ran": False}, "workers": []}


def test_served_deployments_run_tune_workers_as_flow_runs(prefect_server, tmp_path):
    """`python -m pipeline serve` registers the four deployments (retrain on schedule.cron)
    and runs flow runs of them; tune_flow fans a worker out as a flow run of tune-worker."""
    from prefect.client.orchestration import get_client

    from pipeline.flows import tune_flow

    raw = json.loads(json.dumps(TUNED))
    raw["schedule"] = {"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin"}
    project = make_project(tmp_path / "p", raw)
    server = serve_process(project, prefect_server)
    try:
        with get_client(sync_client=True) as client:
            for _ in range(120):
                names = {d.name for d in client.read_deployments()}
                if {"retrain", "pipeline", "tune", "tune-worker"} <= names:
                    break
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.5)
            retrain = client.read_deployment_by_name("dl-retrain/retrain")
        [schedule] = retrain.schedules
        assert schedule.schedule.cron == "30 2 * * 1-5"
        assert schedule.schedule.timezone == "Europe/Berlin"

        result = tune_flow(
            experiment="mlp_digits",
            workers=1,
            deployment="dl-tune-worker/tune-worker",
            root=str(project),
            retries=0,
        )
        [flow_run_id] = result["workers"]
        with get_client(sync_client=True) as client:
            worker_run = client.read_flow_run(flow_run_id)
        assert worker_run.state.is_completed()
        assert worker_run.parameters["experiment"] == "mlp_digits"
        trials = study_trials(project)
        assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    finally:
        interrupt(server)


def serve_process(project, prefect_server: str) -> subprocess.Popen:
    """`python -m pipeline serve` in `project`, its output kept."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_run(deployment: str, timeout: float = 300):
    """The first run of `deployment` that Prefect's scheduler created, once it has ended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                found = client.read_deployment_by_name(deployment)
            except Exception:  # not deployed yet
                time.sleep(1)
                continue
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=1,
            )
            if runs and runs[0].state.is_final():
                return runs[0]
            time.sleep(2)
    raise AssertionError(f"no scheduled run of {deployment} ended within {timeout} s")


def flow_run_logs(flow_run_id) -> list[str]:
    """The last messages Prefect holds for one flow run, its task runs' included."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    mine = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:  # the newest 200 (the server's page)
        logs = client.read_logs(mine, sort=LogSort.TIMESTAMP_DESC)
    return [log.message for log in reversed(logs)]


def soon() -> datetime:
    """A whole minute 60-120 s ahead: time for the server to schedule it, and one run only."""
    return (datetime.now(UTC) + timedelta(seconds=120)).replace(second=0, microsecond=0)


def test_a_cron_schedule_makes_a_run_that_completes(prefect_server, tmp_path):
    """`make serve`'s schedule fires: with schedule.cron a minute or two ahead, Prefect's
    scheduler creates the retrain run by itself, `serve --check` lists it, and the serving
    process runs it to COMPLETED at its time. SIGTERM stops serving cleanly."""
    at = soon()
    raw = json.loads(json.dumps(TINY))
    raw["schedule"] = {"cron": f"{at.minute} {at.hour} * * *", "timezone": "UTC"}
    raw["defaults"]["tracking"]["log_model"] = True  # evaluate then says what it promoted
    project = make_project(tmp_path / "p", raw)
    server = serve_process(project, prefect_server)
    try:
        check = run(["python", "-m", "pipeline", "serve", "--check", "--wait", "60"], project)
        assert "dl-retrain/retrain: the server has scheduled the next runs:" in check.stdout
        assert f"  {at.isoformat()}  Scheduled" in check.stdout
        flow_run = wait_for_run("dl-retrain/retrain")
        assert flow_run.auto_scheduled and flow_run.state.is_completed(), flow_run.state
        assert flow_run.expected_start_time == at
        # the runner may start a run a moment before its time (it fetches runs ahead)
        assert abs((flow_run.start_time - at).total_seconds()) < 60
        assert (project / paths.metrics_file("mlp_digits")).is_file()
        # the stages' own lines are in the flow run's logs, not only on serve's console
        messages = flow_run_logs(flow_run.id)
        champion = "evaluate@mlp_digits | evaluate@mlp_digits: dl-pipeline.mlp_digits v1 is now"
        assert any(m.startswith(champion) for m in messages), messages
    finally:
        server.terminate()  # SIGTERM, as a service manager stops it
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, output
    assert "serve: stopped" in output and "never awaited" not in output


def test_prefect_yaml_deploys_to_a_process_pool_whose_worker_runs_the_flow(
    prefect_server, tmp_path
):
    """pipeline/prefect.yaml as the README says to use it: create the `local` process pool,
    `prefect deploy --all` beside a running `serve` (whose deployments it leaves alone), start
    a worker; a cron schedule on dl-pipeline/pipeline-pool makes a run that the worker runs
    to COMPLETED."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import CronSchedule

    project = make_project(tmp_path / "p", TINY)
    # no prefetch: by default a worker takes a run up to 10 s before its time and starts the
    # flow as soon as its process is up, which on a fast machine is before that time
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "0",
    }
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"

    def prefect(*args: str) -> None:
        proc = subprocess.run(
            ["prefect", *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    served = serve_process(project, prefect_server)
    try:
        with get_client(sync_client=True) as client:
            for _ in range(120):
                # live: an earlier test's serve left it paused at its shutdown, and this serve
                # process takes it over (unpaused) only once it is up
                live = [d for d in client.read_deployments() if d.name == "pipeline"]
                if live and not live[0].paused:
                    break
                assert served.poll() is None, served.stdout.read()
                time.sleep(0.5)
        prefect("work-pool", "create", "local", "--type", "process")
        prefect("--no-prompt", "deploy", "--prefect-file", "pipeline/prefect.yaml", "--all")
        with get_client(sync_client=True) as client:
            names = {d.name for d in client.read_deployments()}
            assert {"retrain-pool", "pipeline-pool", "tune-pool", "tune-worker-pool"} <= names
            # the served deployment of the same flow is still the served one, and live
            mine = client.read_deployment_by_name("dl-pipeline/pipeline")
            assert mine.work_pool_name is None and not mine.paused
            pool = client.read_deployment_by_name("dl-pipeline/pipeline-pool")
            assert pool.work_pool_name == "local"
            at = soon()
            client.create_deployment_schedules(
                pool.id,
                [(CronSchedule(cron=f"{at.minute} {at.hour} * * *", timezone="UTC"), True)],
                parameters={"targets": ["preprocess@digits"]},
            )
    finally:
        interrupt(served)
    worker = subprocess.Popen(
        ["prefect", "worker", "start", "--pool", "local"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        flow_run = wait_for_run("dl-pipeline/pipeline-pool")
        assert flow_run.auto_scheduled and flow_run.state.is_completed(), flow_run.state
        assert flow_run.expected_start_time == at and flow_run.start_time >= at  # no prefetch
        assert (project / paths.split_dir("digits", "train") / "x.npy").is_file()
        lock = yaml.safe_load((project / "dvc.lock").read_text())
        assert set(lock["stages"]) == {"ingest@digits", "preprocess@digits"}
    finally:
        interrupt(worker)


def test_the_prefect_server_logged_no_traceback():
    """Last in this module: nothing the flows above did made the server fail (Prefect's
    scheduler failing on every loop showed only here)."""
    assert SERVER_LOGS, "the module's Prefect server did not start"
    log = SERVER_LOGS[-1].read_text()
    # one record per timestamped line, with the traceback lines under it
    records = re.split(r"\n(?=\d\d:\d\d:\d\d\.\d+ \| )", log)
    failed = [r for r in records if "Traceback" in r or "| ERROR" in r]
    # Prefect's SQLite backend, on a machine this busy, sometimes refuses a worker's heartbeat
    # write ("database is locked"; Prefect retries it at the next heartbeat): not ours to fix
    ours = [r for r in failed if "sqlite3.OperationalError) database is locked" not in r]
    assert ours == [], ours[0][-3000:]


def test_ctrl_c_is_handled_again_after_dvc_ran_a_stage_command():
    """DVC ignores SIGINT while a stage command runs and restores a falsy handler (SIG_DFL)
    as ignored; the flow's stage task puts back whatever was there."""

    from dvc.stage.run import _run  # what `Repo.reproduce` runs a stage command with

    from pipeline.flows import ctrl_c_kept

    before = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        with ctrl_c_kept():
            _run(None, ["true"])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        _run(None, ["true"])  # DVC alone
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
