"""A VAE trained without some classes flags them: its negative ELBO ranks the unseen test
images above the seen ones (AUROC with a bootstrap interval, ROC curve)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pipeline import paths
from pipeline.config import load_params
from pipeline.errors import PipelineError
from pipeline.experiment import prepare
from pipeline.stages import evaluate, ingest, judge, preprocess, train
from tests.conftest import TINY, write_params

VAE = {"name": "vae", "variant": "mlp", "latent_dim": 4, "hidden_size": 64}


def _params(tmp_path, experiments: dict):
    raw = copy.deepcopy(TINY)
    raw["defaults"]["tracking"] = {"enabled": False}
    raw["experiments"] = experiments
    return load_params(write_params(tmp_path / "params.yaml", raw))


@pytest.mark.slow  # stage processes on real data: make test, not test-fast
def test_vae_trained_without_a_class_flags_it_by_negative_elbo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = {"dataset": "digits", "model": VAE, "train": {"epochs": 20, "exclude_classes": [0]}}
    params = _params(tmp_path, {"vae_unseen_0": exp})
    ingest.run(params, "digits")
    preprocess.run(params, "digits")
    judge.run(params, "digits")

    prep = prepare(params.experiments["vae_unseen_0"], "vae_unseen_0")
    assert 0 not in prep.train.y.tolist() and 0 not in prep.val.y.tolist()
    assert set(prep.train.y.tolist()) == set(range(1, 10))

    train.run(params, "vae_unseen_0")
    metrics = evaluate.run(params, "vae_unseen_0")
    auroc = metrics["test/anomaly_auroc"]
    assert (
        metrics["test/anomaly_auroc_ci95_low"] <= auroc <= metrics["test/anomaly_auroc_ci95_high"]
    )
    assert auroc > 0.8, metrics  # a 0 is unlike every digit the model saw
    assert metrics["test/anomaly_score_unseen"] > metrics["test/anomaly_score_seen"]
    assert np.isclose(metrics["test/anomaly_fraction"], 0.1, atol=0.01)  # 36 of 360 test digits
    assert (paths.plots_dir("vae_unseen_0") / "roc.png").is_file()


@pytest.mark.parametrize(
    ("model", "classes", "message"),
    [
        ({"name": "mlp"}, [0], "train.exclude_classes: for vae models"),
        (VAE, [11], "train.exclude_classes: 11 not among the classes of dataset 'digits'"),
        (VAE, list(range(10)), "train.exclude_classes: leaves no class to train on"),
    ],
)
def test_exclude_classes_is_checked_before_training(tmp_path, monkeypatch, model, classes, message):
    monkeypatch.chdir(tmp_path)
    exp = {"dataset": "digits", "model": model, "train": {"exclude_classes": classes}}
    params = _params(tmp_path, {"x": exp})
    ingest.run(params, "digits")
    preprocess.run(params, "digits")
    with pytest.raises(PipelineError, match=message):
        prepare(params.experiments["x"], "x")
    assert not paths.model_file("x").exists()
