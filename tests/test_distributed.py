"""`train.distributed: ddp`: torchrun workers with the gloo backend on the CPU train the CNN to
the accuracy of one process; rank 0 alone logs to MLflow; a `kill -9` resumes under DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import engine, paths
from pipeline.config import load_params
from pipeline.errors import ParamsError
from tests.conftest import run_stage, wait_for_file, write_params

CNN = {"name": "cnn", "channels": [8, 16], "hidden_size": 32, "dropout": 0.0, "batch_norm": False}
DDP = {"distributed": "ddp", "nproc_per_node": 2}
PARAMS = {
    "datasets": {"digits": {"source": "sklearn_digits"}},
    "defaults": {
        "device": "cpu",
        "model": CNN,
        "train": {"epochs": 12, "optimizer": {"lr": 0.005}, "early_stopping": {"patience": 0}},
        "tracking": {"log_model": False},
    },
    "experiments": {
        "one": {"dataset": "digits"},
        "two": {"dataset": "digits", "train": DDP},
        "long": {"dataset": "digits", "train": {**DDP, "epochs": 40, "checkpoint_interval": 0}},
    },
}


def test_shards_of_a_step_together_are_the_step_of_one_process():
    x, y = np.arange(21, dtype=np.float32)[:, None], np.arange(21)
    one = list(engine.Batches(x, y, 6, device="cpu", shuffle=True, seed=3))
    shards = [
        list(engine.Batches(x, y, 6, device="cpu", shuffle=True, seed=3, shard=(r, 2)))
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == len(one) == 4  # every worker takes 4 steps
    for step, (_, yb) in enumerate(one[:-1]):  # the last step is padded on one worker
        together = torch.cat([shards[0][step][1], shards[1][step][1]])
        assert sorted(together.tolist()) == sorted(yb.tolist())
    seen = torch.cat([yb for shard in shards for _, yb in shard])
    assert set(seen.tolist()) == set(range(21)) and len(seen) == 22  # one sample padded


def test_ddp_is_refused_for_generative_models(tmp_path):
    raw = json.loads(json.dumps(PARAMS))
    raw["experiments"]["two"]["model"] = {"name": "vae"}
    with pytest.raises(ParamsError) as info:
        load_params(write_params(tmp_path / "params.yaml", raw))
    assert any("experiments.two.train.distributed" in p for p in info.value.problems)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    write_params(root / "params.yaml", PARAMS)
    for name in ("ingest", "preprocess", "judge"):
        run_stage(root, name, "digits")
    return root


def train_runs(project: Path, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("dl-pipeline").experiment_id
    runs = client.search_runs([exp_id], max_results=100, order_by=["attributes.start_time ASC"])
    return [r for r in runs if r.info.run_name == f"{experiment}/train"]


@pytest.mark.slow
@pytest.mark.integration
def test_two_gloo_processes_reach_the_accuracy_of_one(project):
    accuracy = {}
    for name in ("one", "two"):
        run_stage(project, "train", name)
        run_stage(project, "evaluate", name)
        metrics = json.loads((project / paths.metrics_file(name)).read_text())
        accuracy[name] = metrics["test/accuracy"]
    assert accuracy["one"] > 0.9
    assert abs(accuracy["two"] - accuracy["one"]) <= 0.01, accuracy
    summary = json.loads((project / paths.train_summary_file("two")).read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 12
    [run] = train_runs(project, "two")  # rank 0 alone logs
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.world_size"] == "2"
    assert len(run.data.metrics) > 0 and run.data.params["train.distributed"] == "ddp"


@pytest.mark.slow
@pytest.mark.integration
def test_kill_9_under_ddp_resumes_from_the_checkpoint(project):
    cmd = [sys.executable, "-m", "pipeline.stages.train", "long"]
    proc = subprocess.Popen(
        cmd,
        cwd=project,
        env={**os.environ, "MPLBACKEND": "Agg"},
        start_new_session=True,  # the launcher, torchrun and its workers die together
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = project / paths.checkpoint_file("long")
    wait_for_file(checkpoint, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (project / paths.model_file("long")).exists()
    saved = engine.load_tensors(checkpoint)["state"]["epoch"]
    assert 0 < saved < 40

    run_stage(project, "train", "long")
    summary = json.loads((project / paths.train_summary_file("long")).read_text())
    assert summary["world_size"] == 2
    assert saved <= summary["resumed_from_epoch"] < 40
    assert summary["epochs_run"] == 40  # the history holds every epoch
    killed, resumed = train_runs(project, "long")
    assert killed.info.status == "KILLED" and resumed.info.status == "FINISHED"
