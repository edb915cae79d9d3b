"""Data a model cannot learn from stops at preprocess under a real `dvc repro`: one message
naming the dataset and what is wrong, and nothing trained, written or registered."""

import sqlite3

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import TINY, make_project, run


def one_class_folder(project):
    rng = np.random.default_rng(0)
    (project / "imgs/cat").mkdir(parents=True)
    for i in range(12):
        pixels = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(project / f"imgs/cat/{i}.png")
    return {"source": "image_folder", "path": "imgs", "size": [8, 8]}


def constant_target(project):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40), "price": 7.5})
    frame.to_csv(project / "houses.csv", index=False)
    return {"source": "table", "path": "houses.csv", "target": "price", "task": "regression"}


def empty_column(project):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=40), "notes": np.nan, "y": rng.integers(0, 2, 40)})
    frame.to_csv(project / "t.csv", index=False)
    return {"source": "table", "path": "t.csv", "target": "y", "nan": "impute_median"}


@pytest.mark.parametrize(
    ("make_data", "message"),
    [
        (
            one_class_folder,
            "error: preprocess@mine: datasets.mine: one class only ('cat': 12); a classifier "
            "needs samples of at least two classes",
        ),
        (
            constant_target,
            "error: preprocess@mine: datasets.mine: target 'price' is constant (7.5 in all 40 "
            "rows); there is nothing to learn",
        ),
        (
            empty_column,
            "error: preprocess@mine: datasets.mine: feature column(s) 'notes' hold no value in "
            "any of the 40 rows; list the columns to learn from in datasets.mine.features",
        ),
    ],
    ids=["one-class", "constant-target", "empty-column"],
)
def test_degenerate_data_stops_at_preprocess(tmp_path, make_data, message):
    project = tmp_path / "p"
    project.mkdir()
    params = {
        **TINY,
        "defaults": {**TINY["defaults"], "tracking": {"log_model": True}},
        "datasets": {"mine": make_data(project)},
        "experiments": {"mlp_mine": {"dataset": "mine"}},
    }
    make_project(project, params)
    proc = run(["dvc", "repro"], project, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert out.count(message) == 1, out
    assert "Traceback" not in out
    assert "Running stage 'train@mlp_mine'" not in out
    assert not (project / "data/processed/mine").exists()
    assert not (project / "artifacts/mlp_mine").exists()
    with sqlite3.connect(project / "mlflow.db") as db:  # ingest and preprocess were tracked
        assert db.execute("select count(*) from runs").fetchone()[0] == 2
        assert db.execute("select count(*) from registered_models").fetchone()[0] == 0
