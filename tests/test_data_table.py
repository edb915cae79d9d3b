"""The `table` source on CSV and Parquet files the tests write: splits, encoding, NaN policy,
clear errors, and an MLP trained on it through the real stages."""

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import paths
from pipeline.config import load_params
from pipeline.data import datasets
from pipeline.errors import PipelineError
from pipeline.params.datasets import TableDataset


def churn_frame(n=300, seed=0) -> pd.DataFrame:
    """Customers: churn depends on tenure, monthly charges and the contract type."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, n)
    charges = rng.normal(70, 20, n).round(2)
    contract = rng.choice(["monthly", "yearly", "two-year"], n)
    score = -0.05 * tenure + 0.04 * charges + np.where(contract == "monthly", 1.5, -1.0)
    churn = np.where(score + rng.normal(0, 0.3, n) > np.median(score), "yes", "no")
    return pd.DataFrame(
        {
            "tenure": tenure,
            "charges": charges,
            "contract": contract,
            "customer": np.arange(n) // 3,
            "churn": churn,
        }
    )


def table(path, **kw) -> TableDataset:
    return TableDataset.model_validate({"source": "table", "path": str(path), **kw})


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(name, cfg):
    datasets.ingest(name, cfg)
    datasets.preprocess(name, cfg)
    return datasets.load_schema(name)


def test_csv_classification_is_encoded_with_train_statistics(workdir):
    churn_frame().drop(columns="customer").to_csv("churn.csv", index=False)
    schema = run("churn", table("churn.csv", target="churn"))
    assert schema["task"] == "classification" and schema["classes"] == ["no", "yes"]
    assert schema["features"] == [
        "tenure",
        "charges",
        "contract=monthly",
        "contract=two-year",
        "contract=yearly",
    ]
    x, y = datasets.load_split("churn", "train")
    assert x.shape == (schema["counts"]["train"], 5) and y.dtype == np.int64
    assert np.allclose(x[:, :2].mean(0), 0, atol=1e-5)  # standardised on train
    assert set(np.unique(x[:, 2:])) == {0.0, 1.0} and (x[:, 2:].sum(1) == 1).all()
    assert len(schema["content_hash"]) == 64


def test_parquet_regression_imputes_with_train_means(workdir):
    frame = churn_frame()
    frame["price"] = frame["tenure"] * 1000.5 + 50_000
    frame.loc[[3, 10], "charges"] = np.nan
    frame.loc[5, "charges"] = np.inf
    frame.drop(columns=["churn", "customer"]).to_parquet("houses.parquet")
    schema = run("houses", table("houses.parquet", target="price", nan="impute_mean"))
    assert schema["task"] == "regression" and schema["horizon"] == 1
    assert schema["missing_values"] == {"charges": 3}  # NaN and inf alike
    for split in paths.SPLITS:
        x, y = datasets.load_split("houses", split)
        assert np.isfinite(x).all() and np.isfinite(y).all()
    train_y = datasets.load_split("houses", "train")[1]
    assert abs(train_y.mean()) < 1e-5 and schema["scaler"]["fitted_on"] == "train"


def test_nan_policy_fail_reports_per_column_and_drop_drops(workdir):
    frame = churn_frame()
    frame.loc[[1, 2], "tenure"] = np.nan
    frame.loc[7, "contract"] = None
    frame.to_csv("churn.csv", index=False)
    with pytest.raises(PipelineError, match=r"per column \('tenure': 2, 'contract': 1\); set"):
        run("churn", table("churn.csv", target="churn"))
    assert not paths.processed_dir("churn").exists()  # nothing written
    schema = run("churn", table("churn.csv", target="churn", nan="drop"))
    assert sum(schema["counts"].values()) == len(frame) - 3
    assert datasets.handling_notes(schema) == [
        "dropped 3 row(s) with missing values (tenure: 2, contract: 1)"
    ]
    schema = run("churn", table("churn.csv", target="churn", nan="impute_median"))
    assert datasets.handling_notes(schema) == [
        "imputed 2 value(s) in tenure (median of the train split)",
        "left missing categories as no category (all-zero one-hot): 1 in contract",
    ]


def test_group_column_keeps_each_group_in_one_split(workdir):
    churn_frame().to_csv("churn.csv", index=False)
    cfg = table("churn.csv", target="churn", group="customer", features=["tenure", "charges"])
    run("churn", cfg)
    frame = pd.read_parquet(paths.raw_table_file("churn"))
    splits = data_table_splits(frame, cfg)
    groups = [set(frame["customer"].iloc[idx]) for idx in splits.values()]
    assert (
        not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    )


def data_table_splits(frame, cfg):
    from pipeline.data.table import split_rows

    y = (frame["churn"] == "yes").to_numpy(np.int64)
    return split_rows("churn", cfg, y, frame["customer"], ["no", "yes"])


@pytest.mark.parametrize(
    ("setup", "kw", "message"),
    [
        (lambda: None, {"target": "churn"}, r"datasets.t.path: .*missing.csv not found"),
        (
            lambda: open("t.xlsx", "w").close(),
            {"target": "churn", "path": "t.xlsx"},
            r"'.xlsx' files are not supported; use .csv or .parquet",
        ),
        (lambda: open("missing.csv", "w").close(), {"target": "churn"}, r"cannot read|no rows"),
        (
            lambda: churn_frame().to_csv("missing.csv", index=False),
            {"target": "label"},
            r"column\(s\) 'label' not in missing.csv; columns: tenure, charges",
        ),
    ],
)
def test_bad_table_input_is_one_clear_error(workdir, setup, kw, message):
    setup()
    cfg = table(kw.pop("path", "missing.csv"), **kw)
    with pytest.raises(PipelineError, match=message):
        datasets.ingest("t", cfg)
    assert not paths.raw_dir("t").exists()


def test_a_class_too_small_to_stratify_is_named(workdir):
    frame = churn_frame()
    frame.loc[0, "churn"] = "maybe"
    frame.to_csv("churn.csv", index=False)
    with pytest.raises(PipelineError, match=r"class\(es\) 'maybe' \(1\) have fewer than 3"):
        run("churn", table("churn.csv", target="churn"))


@pytest.mark.slow
def test_mlp_learns_churn_through_the_real_stages(workdir):
    from pipeline.stages import evaluate, ingest, preprocess, train

    churn_frame(n=600).to_csv("churn.csv", index=False)
    params_file = workdir / "params.yaml"
    params_file.write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "churn": {
                        "source": "table",
                        "path": "churn.csv",
                        "target": "churn",
                        "features": ["tenure", "charges", "contract"],
                    }
                },
                "defaults": {"device": "cpu", "train": {"epochs": 30}},
                "experiments": {
                    "mlp_churn": {
                        "dataset": "churn",
                        "model": {"name": "mlp", "hidden_sizes": [32]},
                    }
                },
            }
        )
    )
    params = load_params(params_file)
    ingest.run(params, "churn")
    preprocess.run(params, "churn")
    train.run(params, "mlp_churn")
    metrics = evaluate.run(params, "mlp_churn")
    assert metrics["test/accuracy"] >= 0.85


def test_small_batches_stream_to_the_same_splits_and_train_statistics(workdir, monkeypatch):
    from pipeline.data import table as source

    frame = churn_frame(n=500)
    frame.loc[[3, 40, 200], "charges"] = np.nan
    frame.loc[[7, 300], "contract"] = None
    frame.to_csv("churn.csv", index=False)
    cfg = table("churn.csv", target="churn", nan="impute_median")
    whole = run("whole", cfg)
    monkeypatch.setattr(source, "BATCH_ROWS", 7)  # 72 batches instead of one
    monkeypatch.setattr(source, "CSV_BLOCK_BYTES", 1024)  # ingest reads ~20 blocks
    small = run("small", cfg)

    for key in ("counts", "features", "classes", "class_counts", "task"):
        assert small[key] == whole[key], key
    for col, (mean, std) in whole["encoding"]["stats"].items():
        assert small["encoding"]["stats"][col] == pytest.approx([mean, std], rel=1e-9)
    for split in paths.SPLITS:
        x_small, y_small = datasets.load_split("small", split)
        x_whole, y_whole = datasets.load_split("whole", split)
        np.testing.assert_allclose(x_small, x_whole, rtol=1e-6)
        np.testing.assert_array_equal(y_small, y_whole)
    x_train = datasets.load_split("small", "train")[0]
    assert np.isfinite(x_train).all()  # the NaN charges took the train median
    # standardised with train statistics merged batch by batch (charges: before imputing)
    np.testing.assert_allclose(x_train[:, 0].std(ddof=1), 1, rtol=1e-5)
    np.testing.assert_allclose(x_train[:, 1].std(ddof=1), 1, rtol=1e-2)


def test_a_table_of_floats_only_is_encoded(workdir):
    """Float columns arrive as read-only Arrow memory; inf and NaN are cleaned on a copy."""
    frame = churn_frame()[["charges"]].assign(ratio=lambda f: f["charges"] / 70.0)
    frame["churn"] = churn_frame()["churn"]
    frame.loc[4, "ratio"] = np.inf
    frame.to_csv("floats.csv", index=False)
    schema = run("floats", table("floats.csv", target="churn", nan="impute_mean"))
    assert schema["features"] == ["charges", "ratio"]
    assert all(np.isfinite(datasets.load_split("floats", s)[0]).all() for s in paths.SPLITS)
