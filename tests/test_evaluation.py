"""Evaluation helpers: bootstrap intervals, the classical baseline, robustness to corruptions."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.data.baselines import baseline_classifier
from pipeline.engine import Batches
from pipeline.evaluation import predictive
from pipeline.evaluation.images import robustness
from pipeline.metrics import classification_intervals, interval_half_width, rmse_interval
from pipeline.params.training import Corruption, EvaluateParams
from tests.conftest import ROOT

SCHEMA = {"normalization": {"mean": [0.5], "std": [0.25]}}


def test_bootstrap_intervals_hold_the_estimate_shrink_with_data_and_repeat():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    pred = np.where(rng.random(400) < 0.8, y, (y + 1) % 3)  # about 80% right
    small = classification_intervals(y[:100], pred[:100], 3)
    large = classification_intervals(y, pred, 3)
    acc = np.mean(y == pred)
    assert large["test/accuracy_ci95_low"] < acc < large["test/accuracy_ci95_high"]
    width = lambda m: m["test/accuracy_ci95_high"] - m["test/accuracy_ci95_low"]  # noqa: E731
    assert width(large) < width(small)
    assert classification_intervals(y, pred, 3) == large  # seeded
    assert interval_half_width(large, "test/accuracy") == pytest.approx(width(large) / 2)
    assert interval_half_width(large, "test/elbo") == 0.0
    errors = rmse_interval(rng.normal(size=(200, 1)) ** 2)
    assert 0.7 < errors["test/rmse_ci95_low"] < 1.0 < errors["test/rmse_ci95_high"] < 1.3


def test_baseline_classifier_learns_separable_data_and_token_counts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 1, 4, 4)).astype(np.float32)
    y = (x[:, 0, 0, 0] > 0).astype(int)
    assert np.mean(baseline_classifier(x[:200], y[:200], x[200:]) == y[200:]) > 0.9
    tokens = rng.integers(0, 5, size=(300, 6))
    labels = (tokens == 4).any(1).astype(int)  # a token's presence decides the class
    pred = baseline_classifier(tokens[:200], labels[:200], tokens[200:])
    assert np.mean(pred == labels[200:]) > 0.9


class Brightness(nn.Module):
    """Class 1 if the image is brighter than mid-grey: blind to rotation, hurt by noise."""

    def forward(self, x):
        m = (x * 0.25 + 0.5).mean((1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], 1) * 50


def test_robustness_reports_accuracy_under_each_corruption():
    y = torch.arange(200) % 2
    unit = torch.where(y.view(-1, 1, 1, 1) == 1, 0.56, 0.44).expand(-1, 1, 8, 8).clone()
    batches = Batches((unit - 0.5) / 0.25, y, 64, device="cpu", shuffle=False)
    corruptions = (
        Corruption(name="rotation", severity=90),
        Corruption(name="gaussian_noise", severity=0.8),
    )
    out = robustness(Brightness(), batches, SCHEMA, corruptions)
    rot, noise = "test/robust/rotation_90", "test/robust/gaussian_noise_0.8"
    assert out[f"{rot}/accuracy"] > 0.95  # a quarter turn keeps every pixel
    assert out[f"{noise}/accuracy"] < 0.9  # strong noise flips some
    assert out[f"{noise}/accuracy_ratio_clean"] == pytest.approx(out[f"{noise}/accuracy"])
    assert robustness(Brightness(), batches, SCHEMA, corruptions) == out  # seeded
    assert robustness(Brightness(), batches, SCHEMA, ()) == {}


def test_robustness_without_corruptions_does_not_import_torchvision():
    # importing torchvision took 3 s of a 12 s evaluate stage that had nothing to corrupt
    code = (
        "import sys, torch; from pipeline.engine import Batches;"
        "from pipeline.evaluation.images import robustness;"
        "x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long);"
        "b = Batches(x, y, 2, device='cpu', shuffle=False);"
        "print(robustness(None, b, {}, ()), 'torchvision' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.split() == ["{}", "False"], proc.stdout + proc.stderr


def test_unknown_corruption_is_rejected():
    with pytest.raises(ValueError, match="gaussian_noise"):
        EvaluateParams(corruptions=[{"name": "blur", "severity": 1}])


def test_regression_stands_beside_ridge_and_the_train_mean():
    """On scikit-learn's diabetes table a ridge regression beats the train mean by far; the
    better of the two is the reported baseline. A model that predicts the train mean is then
    worse than the baseline, by the ratio of the two baselines' errors."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = ((x - x[:300].mean(0)) / x[:300].std(0)).astype(np.float32)
    mean, std = float(y[:300].mean()), float(y[:300].std())
    scaled = ((y - mean) / std).astype(np.float32)[:, None]
    schema = {"scaler": {"mean": mean, "std": std}}
    train = (x[:300], scaled[:300])
    test = Batches(x[300:], scaled[300:], 64, device="cpu", shuffle=False)

    class Zero(nn.Module):  # scaled zero: the train mean
        def forward(self, xb):
            return torch.zeros(len(xb), 1)

    result = predictive.regression(Zero(), test, schema, "diabetes", train)
    ridge, mean_only = (result.details["baselines"][k] for k in ("ridge", "train_mean"))
    assert result.details["baseline"] == "ridge"
    assert ridge["rmse"] < 0.8 * mean_only["rmse"]
    assert result.metrics["test/rmse"] == pytest.approx(mean_only["rmse"], rel=1e-5)
    assert result.metrics["test/baseline_rmse"] == ridge["rmse"]
    ratio = result.metrics["test/rmse_ratio_baseline"]
    assert ratio == pytest.approx(mean_only["rmse"] / ridge["rmse"], rel=1e-5) and ratio > 1.2
    assert result.metrics["test/rmse_ratio_mean"] == pytest.approx(1.0, rel=1e-5)


def test_transformer_attention_figure_labels_characters_and_reads_images():
    from models import DataSpec, build_model
    from pipeline.evaluation import attention
    from pipeline.evaluation.base import Inputs

    vocab = ["?", "a", "b", " ", "\n"]
    spec = DataSpec((40,), num_classes=5, vocab_size=5, per_step=True)
    lm = build_model("transformer", {"d_model": 8, "heads": 2, "layers": 1}, spec).eval()
    ids = torch.randint(1, 5, (3, 40))
    text = Inputs(
        "lm", None, {"vocab": vocab}, lm, Batches(ids, ids, 8, device="cpu", shuffle=False), {}
    )
    fig = attention(text)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2  # two test inputs, their first 32 characters
    assert panels[0].get_images()[0].get_array().shape == (32, 32)
    shown = [t.get_text() for t in panels[0].get_xticklabels()]
    assert shown == [repr(vocab[i])[1:-1] for i in ids[0, :32].tolist()]

    images = torch.randn(6, 1, 8, 8)
    classifier = build_model("transformer", {"d_model": 8, "heads": 2}, DataSpec((1, 8, 8), 10))
    batches = Batches(images, torch.zeros(6, dtype=torch.long), 8, device="cpu", shuffle=False)
    fig = attention(Inputs("img", None, {}, classifier.eval(), batches, {}))
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 4 and panels[0].get_images()[0].get_array().shape == (8, 8)  # rows
    weights = np.stack([ax.get_images()[0].get_array() for ax in panels])
    assert np.allclose(weights.sum(-1), 1, atol=1e-5)  # each row: one query's distribution


def _digits(n=600):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n, None] / 16.0 - 0.5) / 0.25  # SCHEMA's normalisation
    return torch.tensor(x, dtype=torch.float32), torch.tensor(d.target[:n])


def _fit(x, y, adversarial_epsilon=0.0):
    from models import DataSpec, build_model
    from pipeline import engine
    from pipeline.params.training import TrainParams
    from pipeline.tasks import make_task

    torch.manual_seed(0)
    model = build_model("mlp", {"hidden_sizes": [64]}, DataSpec((1, 8, 8), 10))
    cfg = TrainParams.model_validate(
        {
            "epochs": 15,
            "early_stopping": {"patience": 0},
            "adversarial_training": {"epsilon": adversarial_epsilon, "steps": 5},
        }
    )
    schema = {**SCHEMA, "input_shape": [1, 8, 8], "class_counts": {"train": [1] * 10}}
    batches = Batches(x, y, 32, device="cpu", shuffle=True)
    val = Batches(x, y, 256, device="cpu", shuffle=False)
    engine.fit(model, batches, val, cfg, make_task("classification", cfg, schema))
    return model.eval()


def test_attacks_stay_within_epsilon_raise_the_loss_and_leave_the_weights_alone():
    from pipeline.augment import ImageScale
    from pipeline.evaluation.attacks import perturb

    x, y = _digits(200)
    model = _fit(x, y)
    model.zero_grad(set_to_none=True)
    scale = ImageScale(SCHEMA["normalization"])
    losses = {"clean": nn.functional.cross_entropy(model(x), y).item()}
    for name, steps, g in (("fgsm", 1, None), ("pgd", 10, torch.Generator().manual_seed(0))):
        adv = perturb(model, x, y, scale, 0.1, steps, g)
        moved = (scale.to_unit(adv) - scale.to_unit(x)).abs()
        assert moved.max() <= 0.1 + 1e-5 and scale.to_unit(adv).min() >= 0
        losses[name] = nn.functional.cross_entropy(model(adv), y).item()
    assert losses["clean"] < losses["fgsm"] < losses["pgd"], losses
    assert all(p.grad is None for p in model.parameters())


def test_adversarial_training_keeps_accuracy_under_pgd():
    from pipeline.evaluation.attacks import attack_accuracy
    from pipeline.params.training import Attack

    x, y = _digits()
    test_x, test_y = _digits(900)
    test = Batches(test_x[600:], test_y[600:], 128, device="cpu", shuffle=False)
    attacks = [Attack(name="pgd", epsilon=0.15), Attack(name="fgsm", epsilon=0.15)]
    schema = {**SCHEMA, "classes": [str(i) for i in range(10)]}
    results = {}
    for name, eps in (("plain", 0.0), ("robust", 0.15)):
        metrics, figures = attack_accuracy(_fit(x, y, eps), test, schema, attacks, 0.9, name)
        results[name] = metrics
        assert set(figures) == {"attacks"}
    key = "test/attack/pgd_0.15/accuracy"
    plain, robust = results["plain"], results["robust"]
    assert plain[f"{key}_ci95_low"] <= plain[key] <= plain[f"{key}_ci95_high"]
    assert robust[f"{key}_ci95_low"] > plain[f"{key}_ci95_high"], (plain, robust)
    fgsm = "test/attack/fgsm_0.15/accuracy"
    assert plain[key] <= plain[fgsm]  # the iterated attack is the stronger one


def test_attacks_and_adversarial_training_are_for_image_classifiers():
    from pipeline.errors import PipelineError
    from pipeline.evaluation.attacks import attack_accuracy
    from pipeline.params.training import Attack, TrainParams
    from pipeline.tasks import make_task

    series = Batches(
        torch.randn(4, 12, 1), torch.zeros(4, dtype=torch.long), 4, device="cpu", shuffle=False
    )
    assert attack_accuracy(
        nn.Linear(1, 2), series, {}, [Attack(name="fgsm", epsilon=0.1)], 1.0, "x"
    ) == ({}, {})
    cfg = TrainParams.model_validate({"adversarial_training": {"epsilon": 0.1}})
    with pytest.raises(PipelineError, match="train.adversarial_training: needs an image"):
        make_task("classification", cfg, {"input_shape": [12], "class_counts": {"train": [1]}})


def test_classification_metrics_are_scikit_learn_s_to_the_last_bit():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from pipeline.metrics import classification_metrics

    rng = np.random.default_rng(0)
    for case in range(100):
        k, n = int(rng.integers(2, 12)), int(rng.integers(1, 300))
        y = rng.integers(0, k, n)
        pred = np.where(rng.random(n) < rng.random(), y, rng.integers(0, k, n))
        if case % 5 == 0:
            pred[:] = 0  # classes never predicted: precision 0, not NaN
        summary, per_class, confusion = classification_metrics(y, pred, list("abcdefghijkl")[:k])
        p, r, f, support = precision_recall_fscore_support(
            y, pred, labels=np.arange(k), zero_division=0
        )
        assert (confusion == confusion_matrix(y, pred, labels=np.arange(k))).all()
        assert summary["test/precision_macro"] == float(p.mean())
        assert summary["test/recall_macro"] == float(r.mean())
        assert summary["test/f1_macro"] == float(f.mean())
        assert [c["support"] for c in per_class.values()] == support.tolist()
        assert [c["f1"] for c in per_class.values()] == f.tolist()


def test_preprocess_records_the_baseline_and_evaluate_needs_it(tmp_path, monkeypatch):
    """preprocess fits the dataset's logistic regression once (schema.json); evaluate reads
    it, and a schema without one (an older preprocess) is one clear error."""
    from pipeline.config import load_params
    from pipeline.data import datasets
    from pipeline.errors import PipelineError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "datasets:\n  digits: {source: sklearn_digits}\nexperiments:\n  m: {dataset: digits}\n"
    )
    params = load_params("params.yaml")
    datasets.ingest("digits", params.datasets["digits"])
    datasets.preprocess("digits", params.datasets["digits"])
    schema = datasets.load_schema("digits")
    baseline = schema["baselines"]["logistic_regression"]
    assert set(baseline) == {"accuracy", "precision_macro", "recall_macro", "f1_macro"}
    assert baseline["accuracy"] > 0.9  # logistic regression on digits' pixels
    x, y = datasets.load_split("digits", "test")
    test = Batches(x, y, 64, device="cpu", shuffle=False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    result = predictive.classification(model, test, schema, "m")
    assert result.metrics["test/baseline_accuracy"] == baseline["accuracy"]
    del schema["baselines"]
    with pytest.raises(
        PipelineError,
        match=r"schema.json has no logistic_regression baseline .* `dvc repro preprocess@digits`",
    ):
        predictive.classification(model, test, schema, "m")


def test_the_stored_autoregression_forecasts_as_statsmodels_does():
    """preprocess keeps the AR baseline's order and coefficients; evaluate's iterated
    forecasts from them are statsmodels' own forecasts."""
    from statsmodels.tsa.ar_model import AutoReg

    from pipeline.data.baselines import ar_forecasts, autoregression

    rng = np.random.default_rng(0)
    series = np.zeros(400)
    for t in range(2, 400):  # an AR(2) process
        series[t] = 5 + 0.6 * series[t - 1] - 0.3 * series[t - 2] + rng.normal()
    model = autoregression(series, max_lags=12)
    assert model["lags"] == 2 and len(model["params"]) == 3
    expected = AutoReg(series, lags=model["lags"]).fit().forecast(4)
    assert np.allclose(ar_forecasts(model, series[None, -12:], 4)[0], expected, rtol=1e-12)


def test_bootstrap_auroc_is_scikit_learn_s_per_resample():
    """The vectorised AUROC (ranks, ties halved) gives scikit-learn's roc_auc_score for the
    point and for every bootstrap resample, so the interval is the one its 1,000 calls gave;
    resamples holding one class are left out."""
    from sklearn.metrics import roc_auc_score

    from pipeline import metrics

    rng = np.random.default_rng(3)
    labels = np.zeros(20, int)
    labels[:2] = 1  # two positives: about one resample in eight has none
    scores = rng.integers(0, 6, 20) + labels * 2.0  # ties
    got = metrics.auroc(labels, scores, "test", "roc_auc")
    expected = [
        roc_auc_score(labels[idx], scores[idx])
        for block in metrics._resamples(20)
        for idx in block
        if 0 < labels[idx].sum() < len(idx)
    ]
    assert len(expected) < metrics.BOOTSTRAP_SAMPLES  # the one-class resamples were skipped
    low, high = np.percentile(expected, [2.5, 97.5])
    assert got["test/roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["test/roc_auc_ci95_low"] == pytest.approx(low, abs=1e-12)
    assert got["test/roc_auc_ci95_high"] == pytest.approx(high, abs=1e-12)
