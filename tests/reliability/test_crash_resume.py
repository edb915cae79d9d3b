"""`kill -9` in the middle of `dvc repro`: the next `dvc repro` needs no clean-up, resumes
training from the checkpoint and ends with the weights of a run that was never interrupted;
the killed process's MLflow run does not stay RUNNING."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from pipeline import locks, paths
from tests.conftest import TINY, make_project, run, wait_for_file

pytestmark = [pytest.mark.slow, pytest.mark.integration]

LONG = {
    **TINY,
    "defaults": {
        **TINY["defaults"],
        "model": {"name": "mlp", "hidden_sizes": [64], "dropout": 0.2},
        # a few seconds of training: the test stops the run (SIGSTOP) once the first
        # checkpoint is written, looks at the locks, then kills it
        "train": {
            "epochs": 40,
            "batch_size": 8,
            "early_stopping": {"patience": 0},
            "checkpoint_interval": 0,  # every epoch: resumable from the first one on
        },
    },
}


def repro_env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    }


def model_weights(project):
    from pipeline.engine import load_tensors

    return load_tensors(project / paths.model_file("mlp_digits"))["state_dict"]


def train_runs(project):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dl-pipeline")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if r.info.run_name == "mlp_digits/train"]


def test_kill_9_during_dvc_repro_then_repro_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import torch

    whole = make_project(tmp_path / "whole", LONG)
    proc = run(["dvc", "repro", "train@mlp_digits"], whole)
    # no terminal: progress is a line every few seconds and at the end, never a bar
    assert re.search(
        r"^mlp_digits: epoch 40/40, loss [\d.]+, val/loss [\d.]+, \d+ s, done$", proc.stdout, re.M
    ), proc.stdout

    killed = make_project(tmp_path / "killed", LONG)
    checkpoint = killed / paths.checkpoint_file("mlp_digits")
    repro = subprocess.Popen(
        ["dvc", "repro", "train@mlp_digits"],
        cwd=killed,
        env=repro_env(),
        start_new_session=True,  # its own process group: dvc and the stage die together
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_file(checkpoint, repro)  # a few epochs in
        # stopped, not ended: its processes and locks stay however slow the checks below
        # are under load, and training cannot finish before the kill
        os.killpg(repro.pid, signal.SIGSTOP)
        # while it runs, the locks name it: DVC's to a second `dvc repro`, the stage's own to
        # `pipeline check` and to the stage started by hand
        blocked = run(["dvc", "repro", "--single-item", "train@mlp_digits"], killed, check=False)
        assert blocked.returncode != 0 and "is being blocked by" in blocked.stderr
        assert f"(PID {repro.pid}): " in blocked.stderr  # the dvc process running it
        check = run([sys.executable, "-m", "pipeline", "check"], killed).stdout
        assert "running now: train@mlp_digits: pid " in check
        assert "pipeline.stages.train mlp_digits" in check
        by_hand = [sys.executable, "-m", "pipeline.stages.train", "mlp_digits"]
        twice = run(by_hand, killed, check=False)
        assert twice.returncode == 2
        assert "train@mlp_digits is already running: pid " in twice.stderr
        assert repro.poll() is None, "training ended before the kill; make it longer"
    finally:
        os.killpg(repro.pid, signal.SIGKILL)
        repro.wait()
    assert any((killed / locks.LOCKS).glob("*.lock"))  # a stale file, locking nothing
    monkeypatch.chdir(killed)
    deadline = time.monotonic() + 30
    while locks.running():  # the stage process dies a moment after dvc
        assert time.monotonic() < deadline, locks.running()
        time.sleep(0.1)
    assert not (killed / paths.model_file("mlp_digits")).exists()
    [orphan] = train_runs(killed)
    assert orphan.info.status == "RUNNING"  # nobody could end it

    # no manual clean-up: DVC drops the dead pid from its lock file, the OS released the
    # stage's lock, and the checkpoint is kept (persist)
    again = run(["dvc", "repro", "train@mlp_digits"], killed)
    assert "Running stage 'train@mlp_digits'" in again.stdout
    resumed = re.search(
        r"^mlp_digits: resumed from epoch (\d+) of 40 \(checkpoint ", again.stdout, re.M
    )
    assert resumed, again.stdout
    first, second = train_runs(killed)
    assert first.info.run_id == orphan.info.run_id
    assert first.info.status == "KILLED" and first.info.end_time is not None
    assert second.info.status == "FINISHED"
    summary = json.loads((killed / paths.train_summary_file("mlp_digits")).read_text())
    assert summary["resumed_from_epoch"] == int(resumed[1]) >= 1 and summary["epochs_run"] == 40

    expected, resumed = model_weights(whole), model_weights(killed)
    assert expected.keys() == resumed.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0, msg=key)
