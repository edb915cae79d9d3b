"""Two-class problems: a single-logit sigmoid head (train.binary_head), ROC AUC with its
interval and curve, and a decision threshold chosen on the validation split."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.nn import functional as F

from models import DataSpec, build_model
from pipeline import paths


def test_the_binary_head_is_one_sigmoid_logit_read_as_two():
    spec = DataSpec(input_shape=(4,), num_classes=2, binary=True)
    torch.manual_seed(0)
    for name, config in (("mlp", {"hidden_sizes": [8]}), ("rnn", {"hidden_size": 8})):
        x = torch.randn(6, 4) if name == "mlp" else torch.randn(6, 3, 4)
        model = build_model(
            name, config, DataSpec((3, 4) if name == "rnn" else (4,), 2, binary=True)
        )
        out = model(x)
        assert out.shape == (6, 2) and (out[:, 0] == 0).all()
    model = build_model("mlp", {"hidden_sizes": [8]}, spec)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.out_features == 1  # one logit, not two
    z = model(torch.randn(6, 4))
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    # softmax over (0, z) is the sigmoid; its cross-entropy is the binary cross-entropy
    assert torch.allclose(z.softmax(1)[:, 1], z[:, 1].sigmoid())
    bce = F.binary_cross_entropy_with_logits(z[:, 1], y.float())
    assert torch.allclose(F.cross_entropy(z, y), bce)


def clinic(n=300) -> pd.DataFrame:
    """scikit-learn's breast cancer measurements (real data, 8 columns) and the diagnosis."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.iloc[:n, :8].copy()
    frame["diagnosis"] = np.asarray(bunch.target_names)[bunch.target.iloc[:n]]
    return frame


@pytest.mark.slow
@pytest.mark.integration
def test_a_binary_head_learns_a_two_class_table_with_roc_and_a_val_threshold(tmp_path, monkeypatch):
    import mlflow

    from pipeline.stages import evaluate, ingest, preprocess, train

    monkeypatch.chdir(tmp_path)
    clinic().to_csv("clinic.csv", index=False)
    experiments = {
        "sigmoid": {"dataset": "clinic", "train": {"binary_head": True}},
        "softmax": {"dataset": "clinic"},
        "wrong": {"dataset": "digits", "train": {"binary_head": True}},
    }
    params = {
        "datasets": {
            "clinic": {"source": "table", "path": "clinic.csv", "target": "diagnosis"},
            "digits": {"source": "sklearn_digits"},
        },
        "defaults": {
            "device": "cpu",
            "model": {"name": "mlp", "hidden_sizes": [32]},
            "train": {"epochs": 15},
        },
        "experiments": experiments,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for dataset in ("clinic", "digits"):
        assert ingest.main([dataset]) == 0 and preprocess.main([dataset]) == 0
    for experiment in ("sigmoid", "softmax"):
        assert train.main([experiment]) == 0 and evaluate.main([experiment]) == 0

    saved = torch.load(paths.model_file("sigmoid"), weights_only=True)
    heads = [v for k, v in saved["state_dict"].items() if k.endswith("linear.weight")]
    assert saved["spec"]["binary"] and [w.shape[0] for w in heads] == [1]
    for experiment in ("sigmoid", "softmax"):
        details = json.loads(paths.details_file(experiment).read_text())
        metrics = details["metrics"]
        assert metrics["test/roc_auc"] >= 0.95, metrics
        assert metrics["test/roc_auc_ci95_low"] <= metrics["test/roc_auc"] <= 1
        assert 0 <= metrics["test/threshold"] <= 1
        assert metrics["test/accuracy_at_threshold"] >= 0.85
        assert (paths.plots_dir(experiment) / "roc.png").is_file()
        assert details["threshold"]["chosen_on"] == "val"

    # the registered model serves probabilities of both classes from its one logit
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/dl-pipeline.sigmoid@champion")
    out = served.predict(clinic().drop(columns="diagnosis").head(20))
    assert np.allclose(out[["p_benign", "p_malignant"]].sum(1), 1)
    assert set(out["label"]) <= {"benign", "malignant"}

    # a ten-class dataset: one clear error before any training, nothing written
    assert train.main(["wrong"]) == 2
    assert not paths.model_file("wrong").exists()
