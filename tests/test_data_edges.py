"""Users' own data under a real `dvc repro`: what cannot be learned from stops at preprocess
with one message (nothing trained, written or registered); what was skipped or filled is
said on the console, in schema.json and on the MLflow run."""

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import TINY, make_project, run

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # real `dvc repro` runs


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


def test_skipped_images_and_filled_values_are_reported_where_users_look(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    folder = one_class_folder(project)
    (project / "imgs/dog").mkdir()
    for i in range(12):
        (project / f"imgs/dog/{i}.png").write_bytes((project / f"imgs/cat/{i}.png").read_bytes())
    (project / "imgs/dog/broken.png").write_bytes(b"not a png")
    rng = np.random.default_rng(0)
    wine = pd.DataFrame(
        {"alcohol": rng.normal(13, 1, 60), "magnesium": rng.normal(100, 10, 60), "y": [0, 1] * 30}
    )
    wine.loc[[1, 5, 9, 20, 30], "alcohol"] = np.nan
    wine.loc[[2, 4], "magnesium"] = np.nan
    wine.to_csv(project / "wine.csv", index=False)
    params = {
        **TINY,
        "datasets": {
            "imgs": {**folder, "max_bad_fraction": 0.1},
            "wine": {"source": "table", "path": "wine.csv", "target": "y", "nan": "impute_median"},
        },
        "experiments": {"mlp_wine": {"dataset": "wine"}},
    }
    make_project(project, params)
    out = run(["dvc", "repro", "preprocess@imgs", "preprocess@wine"], project).stdout
    assert "preprocess@imgs: skipped 1 unreadable image(s): imgs/dog/broken.png\n" in out
    expected = "imputed 5 value(s) in alcohol, 2 in magnesium (median of the train split)"
    assert f"preprocess@wine: {expected}\n" in out
    schema = json.loads((project / "data/processed/wine/schema.json").read_text())
    assert schema["missing_values"] == {"alcohol": 5, "magnesium": 2}
    assert schema["nan_policy"] == "impute_median" and schema["rows_dropped"] == 0
    schema = json.loads((project / "data/processed/imgs/schema.json").read_text())
    assert schema["skipped_unreadable"] == ["imgs/dog/broken.png"]
    with sqlite3.connect(project / "mlflow.db") as db:
        tags = dict(
            db.execute(
                "select r.name, t.value from tags t join runs r on r.run_uuid = t.run_uuid "
                "where t.key = 'data_handling'"
            ).fetchall()
        )
        counts = dict(
            db.execute(
                "select key, value from latest_metrics where key in "
                "('skipped_unreadable', 'missing_values')"
            ).fetchall()
        )
    assert tags == {
        "imgs/preprocess": "skipped 1 unreadable image(s): imgs/dog/broken.png",
        "wine/preprocess": expected,
    }
    assert counts == {"skipped_unreadable": 1, "missing_values": 7}
