"""The shipped params.yaml, unshrunk, reaches the accuracy the README promises (seeded)."""

import pytest

from pipeline.config import load_params
from pipeline.stages import evaluate, ingest, preprocess, train
from tests.conftest import ROOT

# the floor on the test split; README states what was measured
PROMISED = {"mlp_digits": 0.97, "cnn_digits": 0.98}


@pytest.mark.slow
def test_shipped_params_reach_the_promised_test_accuracy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data, artifacts and the MLflow store land in tmp
    params = load_params(ROOT / "params.yaml")
    assert set(PROMISED) == set(params.experiments)
    for dataset in params.datasets:
        ingest.run(params, dataset)
        preprocess.run(params, dataset)
    for experiment, floor in PROMISED.items():
        train.run(params, experiment)
        metrics = evaluate.run(params, experiment)
        assert metrics["test/accuracy"] >= floor, (experiment, metrics)
