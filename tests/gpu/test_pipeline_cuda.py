"""The pipeline's own processes on the device: tune@'s local workers, each pinned to a GPU by
CUDA_VISIBLE_DEVICES, and the registered model scoring raw rows with `predict --device`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import paths

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MLP = {"name": "mlp", "hidden_sizes": [32]}


def project(tmp_path: Path, device, experiment: dict, tracking: bool) -> Path:
    params = {
        "datasets": {"digits": {"source": "sklearn_digits"}},
        "defaults": {
            "device": "auto" if device.type == "cuda" else "cpu",
            "train": {"epochs": 2},
            "tracking": {"enabled": tracking},
        },
        "experiments": {"mlp_digits": {"dataset": "digits", "model": MLP, **experiment}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def stage(root: Path, name: str, target: str) -> None:
    """`python -m pipeline.stages.<name> <target>` as DVC runs it (this checkout importable
    whether or not it is installed: the GPU machine runs it from a bare copy)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", f"pipeline.stages.{name}", target]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name}@{target}:\n{proc.stderr[-3000:]}"


def test_tune_workers_train_on_the_gpu_they_are_pinned_to(device, tmp_path):
    import optuna

    tune = {
        "enabled": True,
        "n_trials": 4,
        "workers": 2,
        "epochs": 1,
        "space": {"train.optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2}},
    }
    root = project(tmp_path, device, {"tune": tune}, tracking=False)
    for name, target in (("ingest", "digits"), ("preprocess", "digits"), ("tune", "mlp_digits")):
        stage(root, name, target)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(root / paths.study_journal("mlp_digits")))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2  # both workers trained
    for t in trials:
        assert t.user_attrs["device"] == device.type
        if device.type == "cuda":  # one GPU here: both workers get GPU 0 (round robin)
            assert t.user_attrs["cuda_visible_devices"] == "0"


def test_predict_on_the_device_gives_evaluate_s_labels(device, tmp_path):
    from pipeline import predict

    root = project(tmp_path, device, {}, tracking=True)
    for name, target in (("ingest", "digits"), ("preprocess", "digits")):
        stage(root, name, target)
    for name in ("train", "evaluate"):
        stage(root, name, "mlp_digits")
    index = np.load(root / paths.split_dir("digits", "test") / "index.npy")
    rows = np.load(root / paths.raw_array_file("digits", "x"))[index].astype(np.float32)
    np.save(root / "rows.npy", rows)
    model = "models:/dl-pipeline.mlp_digits@champion"
    store = f"sqlite:///{root / 'mlflow.db'}"
    os.chdir(root)
    try:
        for where in (device.type, "cpu"):
            assert predict.run(model, "rows.npy", f"{where}.csv", store, where) == len(rows)
    finally:
        os.chdir(ROOT)
    on_device, on_cpu = (pd.read_csv(root / f"{w}.csv") for w in (device.type, "cpu"))
    confusion = pd.read_csv(root / paths.confusion_csv("mlp_digits"))
    assert on_device["label"].astype(str).tolist() == confusion["predicted"].astype(str).tolist()
    probabilities = [f.filter(like="p_").to_numpy() for f in (on_device, on_cpu)]
    assert np.allclose(*probabilities, atol=1e-4)
