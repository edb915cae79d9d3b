"""Many processes on the embedded stores at once: nothing lost, nothing locked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_tune import (  # noqa: F401  (digits_data and project are fixtures)
    digits_data,
    params_with,
    project,
    running_trial,
    stop,
    study_of,
    tune_stage,
    wait_for,
)

pytestmark = pytest.mark.integration

LOGGER = """
import sys
from pipeline.params.training import TrackingParams
from pipeline.tracking import stage_run

index = int(sys.argv[1])
tracking = TrackingParams(uri=sys.argv[2], artifact_location=sys.argv[3])
with stage_run(tracking, name=f"writer-{index}", tags={"writer": str(index)}) as run:
    for step in range(25):
        run.log_metrics({"value": float(index * 100 + step), "step_sq": float(step**2)}, step=step)
    run.log_params({"index": index})
"""


@pytest.mark.slow  # stage processes on real data: make test, not test-fast
def test_eight_processes_log_to_one_fresh_sqlite_store(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOGGER, str(i), uri, str(tmp_path / "artifacts")],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errors
    assert not any("database is locked" in e for e in errors)

    client = MlflowClient(uri)
    [experiment] = client.search_experiments(filter_string="name = 'dl-pipeline'")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == [f"writer-{i}" for i in range(8)]
    for r in runs:
        assert r.info.status == "FINISHED"
        index = int(r.data.params["index"])
        history = client.get_metric_history(r.info.run_id, "value")
        assert sorted((m.step, m.value) for m in history) == [
            (step, float(index * 100 + step)) for step in range(25)
        ]
        assert len(client.get_metric_history(r.info.run_id, "step_sq")) == 25


@pytest.mark.slow
def test_four_workers_finish_exactly_forty_trials_and_retry_a_killed_one(project):  # noqa: F811
    import os
    import signal

    from pipeline.tuning import studies

    # heartbeats every 20 s: on a busy machine (make test runs two test processes) a worker
    # slowed down at start-up is not taken for dead; the killed one's trial is retried 40 s on
    raw = params_with(workers=4, n_trials=40, pruner="none", heartbeat_seconds=20)
    raw["defaults"]["train"].update(epochs=6, batch_size=32)
    proc = tune_stage(project, raw, wait=False)
    try:
        victim = wait_for(lambda: running_trial(project), what="a running trial")
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=900)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    trials = study_of(project).get_trials()
    finished = studies.finished(trials)
    assert len(finished) == 40
    assert len({t.number for t in trials}) == len(trials)
    assert [t.number for t in trials if t.state.name == "FAIL"] == [victim.number]  # no other
    assert not [t for t in trials if t.state.name == "RUNNING"]
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.params == victim.params and retry.state.name == "COMPLETE"
    # all four took trials (the killed one's retry may run in the stage process itself, when
    # its trial goes stale after the workers ran out of trials to claim)
    assert len({t.user_attrs["worker_pid"] for t in trials} - {proc.pid}) == 4
