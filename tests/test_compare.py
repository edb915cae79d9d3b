"""`python -m pipeline compare`: one line per (DVC experiment, pipeline experiment) from DVC's
experiment states; the end-to-end test runs it on a real `dvc exp run`."""

from types import SimpleNamespace

from pipeline.compare import changed, rows, table

METRICS = "reports/experiments/{}/metrics.json"


def state(rev, params, metrics, name=None, experiments=None):
    data = SimpleNamespace(
        params={"params.yaml": {"data": params}},
        metrics={METRICS.format(k): {"data": v} for k, v in metrics.items()},
    )
    return SimpleNamespace(rev=rev, name=name, data=data, experiments=experiments)


def test_a_row_per_experiment_with_its_metric_interval_baseline_and_changed_params():
    params = {"defaults": {"seed": 42}, "experiments": {"mlp": {"train": {"epochs": 10}}}}
    tried = {"defaults": {"seed": 42}, "experiments": {"mlp": {"train": {"epochs": 80}}}}
    acc = {
        "test/accuracy": 0.95,
        "test/accuracy_ci95_low": 0.93,
        "test/accuracy_ci95_high": 0.97,
        "test/accuracy_ratio_baseline": 0.99,
    }
    rmse = {"test/rmse": 12.5, "test/rmse_ratio_persistence": 0.8}
    exp = state("b" * 40, tried, {"mlp": {**acc, "test/accuracy": 0.96}, "gru": rmse})
    head = state(
        "a" * 40,
        params,
        {"mlp": acc, "gru": rmse, "pending": {}},
        name="main",
        experiments=[SimpleNamespace(revs=[exp], name="tiny-fish")],
    )
    found = rows([head])
    assert found == [
        [
            "main",
            "gru",
            "test/rmse (lower is better)",
            "12.5000",
            "0.800x persistence (last value)",
            "",
        ],
        [
            "main",
            "mlp",
            "test/accuracy (higher is better)",
            "0.9500 [0.9300, 0.9700]",
            "0.990x logistic regression",
            "",
        ],
        [
            "tiny-fish",
            "gru",
            "test/rmse (lower is better)",
            "12.5000",
            "0.800x persistence (last value)",
            "",
        ],
        [
            "tiny-fish",
            "mlp",
            "test/accuracy (higher is better)",
            "0.9600 [0.9300, 0.9700]",
            "0.990x logistic regression",
            "experiments.mlp.train.epochs=80",
        ],
    ]
    assert [r[1] for r in rows([head], ["mlp"])] == ["mlp", "mlp"]
    text = table(found).splitlines()
    assert text[0].startswith("DVC experiment") and len(text) == 5
    assert text[4].endswith("experiments.mlp.train.epochs=80")


def test_changed_params_name_the_experiment_and_the_defaults_only():
    base = {"defaults": {"seed": 1}, "experiments": {"a": {"x": 1}, "b": {"x": 1}}}
    new = {"defaults": {"seed": 2}, "experiments": {"a": {"x": 1}, "b": {"x": 3, "y": 4}}}
    assert changed(new, base, "a") == ["defaults.seed=2"]
    assert changed(new, base, "b") == ["defaults.seed=2", "experiments.b.x=3", "experiments.b.y=4"]
    assert changed(base, new, "b") == [
        "defaults.seed=1",
        "experiments.b.x=1",
        "experiments.b.y=(removed)",
    ]
