"""A stage's MLflow run ends with the right state and an end time however the process ends:
an error (FAILED), Ctrl-C (KILLED); SIGTERM and kill -9 are covered beside the resume tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from pipeline import paths
from tests.conftest import make_project, run, wait_for_file, write_params
from tests.reliability.test_crash_resume import LONG, repro_env, train_runs

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("status"), LONG)
    run(["dvc", "repro", "tune@mlp_digits"], project)  # the data train needs
    return project


TRAIN = [sys.executable, "-m", "pipeline.stages.train", "mlp_digits"]


def test_ctrl_c_ends_the_run_killed_on_a_busy_machine(project):
    """Three busy processes per core: the stage still stops within seconds, and its run is
    KILLED (a signal that lands inside a store write takes effect once the write ends)."""
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(3 * (os.cpu_count() or 1))
    ]
    try:
        proc = subprocess.Popen(
            TRAIN, cwd=project, env=repro_env(), stderr=subprocess.PIPE, text=True
        )
        checkpoint = project / paths.checkpoint_file("mlp_digits")
        checkpoint.unlink(missing_ok=True)
        wait_for_file(checkpoint, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        for p in busy:
            p.kill()
    assert proc.returncode == 130
    assert err.strip().endswith("train@mlp_digits: interrupted") and "Traceback" not in err
    last = train_runs(project)[-1]
    assert last.info.status == "KILLED" and last.info.end_time is not None


def test_an_error_ends_the_run_failed_and_the_stage_exits_non_zero(project):
    raw = json.loads(json.dumps(LONG))
    raw["defaults"]["train"].update(optimizer={"name": "sgd", "lr": 1e12}, grad_clip=None)
    write_params(project / "diverge.yaml", raw)
    proc = run([*TRAIN, "--params", "diverge.yaml"], project, check=False)
    assert proc.returncode == 2 and "training diverged at epoch 1, step" in proc.stderr
    last = train_runs(project)[-1]
    assert last.info.status == "FAILED" and last.info.end_time is not None
