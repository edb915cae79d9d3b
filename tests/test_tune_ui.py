"""`make tune-ui`: Optuna's dashboard serves an experiment's study from the journal tune@ keeps."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from benchmarks.common import venv_env
from tests.conftest import ROOT


@pytest.mark.integration
def test_make_tune_ui_serves_the_study_in_a_journal(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "study.journal"  # what tune@ writes: artifacts/<exp>/tuning/study.journal
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="cnn_digits-abc", storage=storage)
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen(
        ["make", "-s", "tune-ui", f"STUDY={journal}", f"TUNE_UI_PORT={port}"],
        cwd=ROOT,
        env=venv_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # make and the dashboard it starts: one group to stop
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/studies"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    studies = json.load(resp)["study_summaries"]
                break
            except OSError:
                assert ui.poll() is None, ui.stdout.read().decode()
                assert time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.5)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", timeout=5
        ) as resp:
            trials = json.load(resp)["trials"]
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    assert [s["study_name"] for s in studies] == ["cnn_digits-abc"]
    assert len(trials) == 3
