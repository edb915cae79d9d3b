"""`dvc exp run --queue` of four variants run two at a time: every one succeeds with its own
metrics, and its MLflow runs land in the project's store (not the queue's temporary copy)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TINY, make_project, run, venv_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RATES = (0.001, 0.003, 0.008, 0.02)
# `dvc exp run -S` overrides keys that exist. Tuning is on (two quick trials over weight
# decay): with it off, every variant's tune@ writes the same kept (persist) output, and DVC
# (3.67) committing that one object to the shared cache from two queue workers at once
# sometimes failed one of them ("unable to remove ... without a confirmation")
QUEUED = {
    **TINY,
    "defaults": {**TINY["defaults"], "train": {"epochs": 3, "optimizer": {"lr": 0.001}}},
    "experiments": {
        "mlp_digits": {
            "dataset": "digits",
            "tune": {
                "enabled": True,
                "n_trials": 2,
                "epochs": 1,
                "space": {
                    "train.optimizer.weight_decay": {"type": "float", "low": 1e-5, "high": 1e-3}
                },
            },
        }
    },
}


def start_queue(project: Path, jobs: int) -> None:
    """`dvc queue start`: it returns once its detached workers run. They inherit its output,
    so it writes to a file rather than to a pipe this process would read until they exit."""
    with (project.parent / "queue-start.log").open("w") as log:
        cmd = ["dvc", "queue", "start", "-j", str(jobs)]
        code = subprocess.run(cmd, cwd=project, env=venv_env(), stdout=log, stderr=log).returncode
    assert code == 0, (project.parent / "queue-start.log").read_text()


def kill_processes_in(folder: Path) -> None:
    """Kill whatever still runs in `folder` (a queue worker that did not stop)."""
    for entry in Path("/proc").iterdir():
        # OSError: the process is gone, or not ours to read
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == folder:
                os.kill(int(entry.name), signal.SIGKILL)


def failed_lines(status: str) -> str:
    """The lines of `dvc queue status` that say Failed, each ending in a space."""
    return "\n".join(line + " " for line in status.splitlines() if "Failed" in line)


def finished_experiments(project) -> dict[str, dict]:
    """name -> metrics of every experiment `dvc exp show` lists as done."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    out = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            [revision] = exp["revs"]
            data = revision.get("data") or {}
            if revision.get("name") and data.get("metrics"):
                [metrics] = data["metrics"].values()
                out[revision["name"]] = metrics["data"]
    return out


def test_four_queued_experiments_run_two_at_a_time(tmp_path):
    from mlflow import MlflowClient

    project = make_project(tmp_path / "p", QUEUED)
    for i, rate in enumerate(RATES):
        setting = f"defaults.train.optimizer.lr={rate}"
        run(["dvc", "exp", "run", "--queue", "-n", f"lr-{i}", "-S", setting], project)
    start_queue(project, 2)
    deadline = time.monotonic() + 900
    try:
        while True:
            status = run(["dvc", "queue", "status"], project).stdout
            if status.count("Success") == len(RATES) or "Failed" in status:
                break
            assert time.monotonic() < deadline, status
            time.sleep(5)
        # what a failed experiment printed, for the assertion's message
        failed = [f"lr-{i}" for i in range(len(RATES)) if f"lr-{i} " in failed_lines(status)]
        logs = [run(["dvc", "queue", "logs", name], project, check=False) for name in failed]
    finally:
        run(["dvc", "queue", "stop"], project, check=False)
        kill_processes_in(project)
    printed = "".join(p.stdout + p.stderr for p in logs)
    assert status.count("Success") == len(RATES), status + printed

    done = finished_experiments(project)
    assert sorted(done) == [f"lr-{i}" for i in range(len(RATES))]
    accuracies = {name: m["test/accuracy"] for name, m in done.items()}
    assert len(set(accuracies.values())) > 1  # each its own model

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dl-pipeline")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trains = [r for r in runs if r.info.run_name == "mlp_digits/train"]
    assert sorted(r.data.tags["pipeline.dvc_exp"] for r in trains) == sorted(done)
    unfinished = [(r.info.run_name, r.info.status, r.data.tags) for r in runs]
    unfinished = [u for u in unfinished if u[1] != "FINISHED"]
    assert not unfinished
    by_exp = {r.data.tags["pipeline.dvc_exp"]: r for r in trains}
    for i, rate in enumerate(RATES):
        assert float(by_exp[f"lr-{i}"].data.params["train.optimizer.lr"]) == rate
