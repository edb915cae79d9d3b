"""A real `mlflow server` on loopback, its backend store a PostgreSQL database (the production
layout, with a local folder standing in for the S3-compatible artifact store): the pipeline
logs to it by URI, registers every model, moves the `champion` alias only on a real
improvement, and `predict` serves the champion."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import paths
from tests.conftest import free_port, run_stage, start_mlflow_server, wait_until_up, write_params

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EXP = "mlp"
NAME = f"dl-pipeline.{EXP}"
WEAK = {"model": {"name": "mlp", "hidden_sizes": [2]}, "train": {"epochs": 1}}
STRONG = {"model": {"name": "mlp", "hidden_sizes": [64]}, "train": {"epochs": 20}}


def params(uri: str, variant: dict) -> dict:
    exp = {"dataset": "digits", **copy.deepcopy(variant)}
    return {
        "datasets": {"digits": {"source": "sklearn_digits"}},
        "defaults": {
            "device": "cpu",
            "train": {"early_stopping": {"patience": 0}},
            "tracking": {"uri": uri},
        },
        "experiments": {EXP: exp},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory, postgres):
    """`mlflow server` backed by a PostgreSQL database, stopped after the module."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    proc = start_mlflow_server(root, port, backend=postgres.create_database("mlflow"))
    uri = f"http://127.0.0.1:{port}"
    wait_until_up(f"{uri}/health", proc)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def project(server, tmp_path_factory):
    """Three train+evaluate rounds against the server: weak, strong, weak again."""
    root = tmp_path_factory.mktemp("registry_project")
    write_params(root / "params.yaml", params(server, WEAK))
    run_stage(root, "ingest", "digits")
    run_stage(root, "preprocess", "digits")
    decisions = []
    for variant in (WEAK, STRONG, WEAK):
        write_params(root / "params.yaml", params(server, variant))
        run_stage(root, "train", EXP)
        run_stage(root, "evaluate", EXP)
        decisions.append(json.loads((root / paths.summary_file(EXP)).read_text())["registry"])
    (root / "decisions.json").write_text(json.dumps(decisions))
    return root


def test_runs_metrics_and_artifacts_reach_the_server(server, project):
    from mlflow import MlflowClient

    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("dl-pipeline")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    names = sorted(r.info.run_name for r in runs)
    assert (
        names
        == ["digits/ingest", "digits/preprocess"] + [f"{EXP}/evaluate"] * 3 + [f"{EXP}/train"] * 3
    )
    evaluate = [r for r in runs if r.info.run_name == f"{EXP}/evaluate"]
    for run in evaluate:
        m = run.data.metrics
        assert m["test/accuracy_ci95_low"] <= m["test/accuracy"] <= m["test/accuracy_ci95_high"]
        assert m["test/baseline_accuracy"] > 0.9  # logistic regression on digits
    train = [r for r in runs if r.info.run_name == f"{EXP}/train"]
    for run in train:
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"augmentations.png", "config.yaml"} <= artifacts
        assert client.get_metric_history(run.info.run_id, "val/loss")


def test_champion_moves_only_on_a_real_improvement(server, project):
    from mlflow import MlflowClient

    first, second, third = json.loads((project / "decisions.json").read_text())
    assert first["promoted"] and first["reason"] == "no champion yet"
    assert second["promoted"] and second["value"] - second["champion_value"] > second["margin"]
    assert not third["promoted"] and third["champion_after"] == second["version"]
    client = MlflowClient(server)
    versions = client.search_model_versions(f"name='{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.version == second["version"] == "2"
    assert float(champion.tags["test_value"]) == pytest.approx(second["value"])
    # the decision is logged on the evaluate run that made it
    runs = client.search_runs(
        [client.get_experiment_by_name("dl-pipeline").experiment_id],
        filter_string="tags.`pipeline.registry.decision` = 'kept'",
    )
    assert len(runs) == 1


def _raw_test_split(project: Path):
    """The test split in raw pixel units (0-16), as a user would have it: as stored."""
    schema = json.loads((project / paths.schema_file("digits")).read_text())
    x, y = (np.load(project / paths.split_dir("digits", "test") / f"{k}.npy") for k in "xy")
    return x.astype(np.float32), y, schema


def _predict(project, server, model_input, *extra):
    cmd = [sys.executable, "-m", "pipeline", "predict", "--model", f"models:/{NAME}@champion"]
    cmd += ["--input", str(model_input), "--output", str(project / "preds.csv")]
    cmd += ["--tracking-uri", server, *extra]
    return subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=300)


def test_predict_serves_the_champion_with_its_own_preprocessing(server, project):
    raw, y, schema = _raw_test_split(project)
    np.save(project / "test.npy", raw.astype(np.float32))
    proc = _predict(project, server, project / "test.npy")
    assert proc.returncode == 0, proc.stderr
    with (project / "preds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(y)
    predicted = np.array([schema["classes"].index(r["label"]) for r in rows])
    second = json.loads((project / "decisions.json").read_text())[1]
    # the champion's own test accuracy, reproduced from raw inputs outside the pipeline
    assert np.mean(predicted == y) == pytest.approx(second["value"], abs=1 / len(y))

    from PIL import Image

    folder = project / "images"
    folder.mkdir()
    for i in range(20):
        pixels = (raw[i, 0] / 16 * 255).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:02d}.png")
    proc = _predict(project, server, folder)
    assert proc.returncode == 0, proc.stderr
    with (project / "preds.csv").open() as f:
        images = list(csv.DictReader(f))
    assert [r["input"] for r in images] == [f"{i:02d}.png" for i in range(20)]
    agree = np.mean([r["label"] == rows[i]["label"] for i, r in enumerate(images)])
    assert agree >= 0.9  # 8-bit PNGs round the pixels a little

    np.save(project / "wrong.npy", np.zeros((3, 5), np.float32))
    proc = _predict(project, server, project / "wrong.npy")
    assert proc.returncode == 2
    assert "the model takes (1, 8, 8) (64 values per sample, in 0..16)" in proc.stderr
    assert "Traceback" not in proc.stderr
