"""The registered champion, taken out of the pipeline, gives the pipeline's answers on RAW
inputs: for every data kind, `mlflow.pyfunc.load_model` and `python -m pipeline predict` on
the raw test rows reproduce what evaluate measured (classification: the same predicted
label for every row; regression and forecasting: the same error, to 1e-6 relative)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmarks.common import read_test_metrics
from pipeline import paths
from pipeline.errors import PipelineError
from tests.test_data_text import reviews
from tests.test_data_vision import fake_mnist

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MLP = {"name": "mlp", "hidden_sizes": [32]}
# the transformer reads the photos as 4x4 patches and the reviews as padded tokens
TRANSFORMER = {"name": "transformer", "d_model": 16, "heads": 2, "layers": 1}


def _clinic_table(n=240, seed=0) -> pd.DataFrame:
    """scikit-learn's breast cancer table (real measurements, first 6 columns) with a text
    column, a whole-number column, and missing values in a numeric and in the text column."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.iloc[:n, :6].copy()
    rng = np.random.default_rng(seed)
    frame["clinic"] = rng.choice(["north", "south", "east"], len(frame))
    frame["visits"] = rng.integers(0, 9, len(frame))  # whole numbers: int64 when read back
    frame.loc[rng.random(len(frame)) < 0.15, "mean texture"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.15, "clinic"] = None
    frame["diagnosis"] = np.asarray(bunch.target_names)[bunch.target.iloc[:n]]
    return frame


def _diabetes_table() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(as_frame=True, scaled=False)
    return bunch.frame.rename(columns={"target": "progression"})


def _image_folder(root: Path, per_class=14, classes=("dark", "mid", "light")) -> None:
    """PNG and JPEG photos whose brightness tells the class, and one corrupt file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for j in range(per_class):
            pixels = np.clip(rng.normal(60 + 70 * i, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{j:02d}{'.jpg' if j % 2 else '.png'}")
    (root / classes[0] / "broken.png").write_bytes(b"not an image")


# kind -> (dataset params, model params, writes the raw data into the project)
KINDS = {
    "digits": ({"source": "sklearn_digits"}, MLP, None),
    "mnist_files": (
        {"source": "mnist", "root": "ext", "split": {"val": 0.25}},
        MLP,
        lambda root: fake_mnist(root / "ext", n_train=60, n_test=30),
    ),
    "image_folder": (
        {"source": "image_folder", "path": "photos", "size": [12, 12], "max_bad_fraction": 0.1},
        {**TRANSFORMER, "patch_size": 4},
        lambda root: _image_folder(root / "photos"),
    ),
    "table_classes": (
        {"source": "table", "path": "clinic.csv", "target": "diagnosis", "nan": "impute_mean"},
        MLP,
        lambda root: _clinic_table().to_csv(root / "clinic.csv", index=False),
    ),
    "table_values": (
        {"source": "table", "path": "diabetes.parquet", "target": "progression"},
        MLP,
        lambda root: _diabetes_table().to_parquet(root / "diabetes.parquet"),
    ),
    "text": (
        {
            "source": "text",
            "path": "reviews.csv",
            "text_column": "review",
            "label_column": "sentiment",
            "max_length": 12,
        },
        TRANSFORMER,
        lambda root: reviews(n=160).to_csv(root / "reviews.csv", index=False),
    ),
    "series": (
        {"source": "statsmodels", "name": "sunspots", "lookback": 12, "horizon": 2},
        {"name": "rnn", "cell": "gru", "hidden_size": 16},
        None,
    ),
}


@contextlib.contextmanager
def _inside(folder: Path):
    here = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def _name(kind: str) -> str:
    return f"dl-pipeline.{kind}_model"


_TRAINED: dict[str, Path] = {}


@pytest.fixture(scope="module", params=list(KINDS))
def project(request, tmp_path_factory):
    return request.param, trained(request.param, tmp_path_factory)


def trained(kind: str, tmp_path_factory) -> Path:
    """A project with one trained, evaluated and registered model of `kind`, through the
    real stages (made once per test module)."""
    if kind not in _TRAINED:
        _TRAINED[kind] = _train(kind, tmp_path_factory)
    return _TRAINED[kind]


def _train(kind: str, tmp_path_factory) -> Path:
    from pipeline.stages import evaluate, ingest, preprocess, train

    dataset, model, write = KINDS[kind]
    root = tmp_path_factory.mktemp(kind)
    if write:
        write(root)
    params = {
        "datasets": {kind: dataset},
        "defaults": {"device": "cpu", "train": {"epochs": 4}},
        "experiments": {f"{kind}_model": {"dataset": kind, "model": model}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with _inside(root):
        for stage, name in ((ingest, kind), (preprocess, kind)):
            assert stage.main([name]) == 0
        for stage in (train, evaluate):
            assert stage.main([f"{kind}_model"]) == 0
    return root


def raw_test_rows(kind: str, root: Path):
    """(the test split as the user has it, what evaluate compared against): raw arrays,
    DataFrames with the original columns (target included), or windows of the series."""
    index = np.load(root / paths.split_dir(kind, "test") / "index.npy")
    if kind in ("digits", "mnist_files", "image_folder"):
        # raw pixels (uint8 for photos and MNIST files) as the signature takes them: float32
        return np.load(root / paths.raw_array_file(kind, "x"))[index].astype(np.float32), None
    if kind == "table_classes":
        return pd.read_csv(root / "clinic.csv").iloc[index].reset_index(drop=True), None
    if kind == "table_values":
        frame = pd.read_parquet(root / "diabetes.parquet").iloc[index].reset_index(drop=True)
        return frame, frame.pop("progression").to_numpy()[:, None]
    if kind == "text":
        return pd.read_csv(root / "reviews.csv").iloc[index].reset_index(drop=True), None
    import statsmodels.datasets

    values = statsmodels.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    lookback, horizon = KINDS[kind][0]["lookback"], KINDS[kind][0]["horizon"]
    windows = np.stack([values[s - lookback : s] for s in index])
    columns = [f"t-{k}" for k in range(lookback, 0, -1)]
    frame = pd.DataFrame(windows, columns=columns)
    frame.insert(0, "year", 1700 + index)  # a column the model does not take
    return frame, np.stack([values[s : s + horizon] for s in index])


def evaluated(root: Path, kind: str):
    """What evaluate measured: the predicted labels (confusion.csv) and the test metrics."""
    metrics = read_test_metrics(root, f"{kind}_model")
    confusion = root / paths.confusion_csv(f"{kind}_model")  # classifiers only
    if not confusion.is_file():
        return [], metrics
    with confusion.open() as f:
        labels = [row["predicted"] for row in csv.DictReader(f)]
    return labels, metrics


def assert_reproduces(kind: str, root: Path, predictions: pd.DataFrame, actual) -> None:
    labels, metrics = evaluated(root, kind)
    if "label" in predictions:
        assert predictions["label"].astype(str).tolist() == labels
        probabilities = predictions.filter(like="p_").to_numpy()
        assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
        return
    values = predictions.filter(like="prediction").to_numpy(np.float64)
    assert values.shape == actual.shape
    rmse = float(np.sqrt(np.mean((values - actual) ** 2)))
    assert rmse == pytest.approx(metrics["test/rmse"], rel=1e-6)


def _load_champion(root: Path, kind: str):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.pyfunc.load_model(f"models:/{_name(kind)}@champion")


def test_the_champion_reproduces_evaluate_on_raw_rows(project):
    kind, root = project
    rows, actual = raw_test_rows(kind, root)
    model = _load_champion(root, kind)
    if isinstance(rows, pd.DataFrame):
        signature = [spec.name for spec in model.metadata.signature.inputs.inputs]
        assert "diagnosis" not in signature and "sentiment" not in signature
        if kind == "table_classes":  # a text column and missing values among the raw rows
            assert rows["clinic"].isna().any() and rows["mean texture"].isna().any()
            assert {"clinic", "mean texture"} <= set(signature)
        rows = rows[signature]
    assert_reproduces(kind, root, model.predict(rows), actual)


def _predict(root: Path, kind: str, path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "predict",
        "--model",
        f"models:/{_name(kind)}@champion",
    ]
    cmd += ["--input", str(path), "--output", "preds.csv", *extra]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_predict_command_reproduces_evaluate_on_raw_files(project):
    kind, root = project
    rows, actual = raw_test_rows(kind, root)
    expect_note = None
    if kind == "image_folder":  # the test photos themselves, and an unreadable one
        folder = root / "to_score"
        folder.mkdir()
        index = np.load(root / paths.split_dir(kind, "test") / "index.npy")
        readable = sorted(
            p for p in (root / "photos").rglob("*") if p.is_file() and p.name != "broken.png"
        )
        readable.sort(key=lambda p: (p.parent.name, p.name))  # ingest's order
        for i, position in enumerate(index):
            source = readable[position]
            (folder / f"{i:03d}{source.suffix}").write_bytes(source.read_bytes())
        (folder / "999.png").write_bytes(b"\x89PNG truncated")
        path, expect_note = folder, "skipped 1 unreadable image(s): 999.png"
    elif isinstance(rows, pd.DataFrame):  # the target column comes along and is ignored
        path = root / "rows.csv"
        rows.to_csv(path, index=False)
        if kind != "table_values":
            expect_note = "ignoring column(s) the model does not take"
    else:
        path = root / "rows.npz"
        np.savez(path, images=rows.astype(np.uint8))  # the 8-bit pixels of the files
    proc = _predict(root, kind, path)
    assert proc.returncode == 0, proc.stderr
    if expect_note:
        assert expect_note in proc.stderr
    predictions = pd.read_csv(root / "preds.csv", dtype={"label": str})
    if kind == "image_folder":  # a row per readable file, named by it
        assert predictions["input"].str[:3].tolist() == [f"{i:03d}" for i in range(len(rows))]
    assert_reproduces(kind, root, predictions, actual)


def test_predict_scores_an_npy_file_a_block_at_a_time(tmp_path_factory, monkeypatch):
    """An .npy input is read from disk and scored a block of rows at a time (a file larger
    than memory works): the same CSV as scoring it in one block."""
    from pipeline import predict

    root = trained("digits", tmp_path_factory)
    rows, actual = raw_test_rows("digits", root)
    np.save(root / "rows.npy", rows)
    monkeypatch.chdir(root)
    model, store = f"models:/{_name('digits')}@champion", f"sqlite:///{root / 'mlflow.db'}"
    assert predict.run(model, "rows.npy", "whole.csv", store, "cpu") == len(rows)
    monkeypatch.setattr(predict, "BLOCK_BYTES", 50 * rows[0].nbytes)  # 50 rows a block
    assert predict.run(model, "rows.npy", "blocks.csv", store, "cpu") == len(rows)
    assert (root / "blocks.csv").read_text() == (root / "whole.csv").read_text()
    assert_reproduces("digits", root, pd.read_csv(root / "blocks.csv"), actual)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_scores_a_table_a_block_at_a_time(suffix, tmp_path_factory, monkeypatch, capsys):
    """A CSV or Parquet input is read and scored a block of rows at a time (a file larger
    than memory works): the same predictions as one block, a note said once, and a bad
    value named by its row in the file."""
    from pipeline import predict

    root = trained("table_classes", tmp_path_factory)
    rows, actual = raw_test_rows("table_classes", root)
    path = root / f"rows{suffix}"
    write = rows.to_csv if suffix == ".csv" else rows.to_parquet
    write(path, index=False)
    monkeypatch.chdir(root)
    model = f"models:/{_name('table_classes')}@champion"
    store = f"sqlite:///{root / 'mlflow.db'}"
    assert predict.run(model, str(path), "whole.csv", store, "cpu") == len(rows)
    monkeypatch.setattr(predict.TableFile, "HEAD_ROWS", 7)
    monkeypatch.setattr(predict, "BLOCK_BYTES", 1)  # HEAD_ROWS (7) rows a block
    capsys.readouterr()
    assert predict.run(model, str(path), "blocks.csv", store, "cpu") == len(rows)
    assert capsys.readouterr().err.count("ignoring column(s) the model does not take") == 1
    whole, blocks = (pd.read_csv(root / f) for f in ("whole.csv", "blocks.csv"))
    assert blocks["input"].tolist() == list(range(len(rows)))
    pd.testing.assert_frame_equal(blocks, whole, rtol=1e-6)
    assert_reproduces("table_classes", root, blocks, actual)
    bad = rows.copy()  # a text column (Parquet types one), 'large' in the last block
    bad["mean radius"] = bad["mean radius"].map(lambda v: v if pd.isna(v) else str(v))
    bad.loc[len(rows) - 2, "mean radius"] = "large"
    write = bad.to_csv if suffix == ".csv" else bad.to_parquet
    write(path, index=False)
    with pytest.raises(PipelineError, match=rf"holds 'large' \(row {len(rows) - 2}\)"):
        predict.run(model, str(path), "bad.csv", store, "cpu")
    assert not (root / "bad.csv").exists()


def test_predict_scores_an_image_folder_a_block_at_a_time(tmp_path_factory, monkeypatch, capsys):
    """A folder of images is decoded and scored a block of images at a time (a folder larger
    than memory works): the same predictions as one block; the unreadable files (a whole block of
    them here) are reported once."""
    from pipeline import predict

    root = trained("image_folder", tmp_path_factory)
    folder = root / "to_score_in_blocks"
    folder.mkdir()
    photos = sorted(p for p in (root / "photos").rglob("*.png") if p.name != "broken.png")
    for i, source in enumerate(photos[:12]):
        (folder / f"{i:03d}.png").write_bytes(source.read_bytes())
    for name in ("005b", "005c", "005d"):  # sorted between 005 and 006: the third block
        (folder / f"{name}.png").write_bytes(b"\x89PNG truncated")
    monkeypatch.chdir(root)
    model = f"models:/{_name('image_folder')}@champion"
    store = f"sqlite:///{root / 'mlflow.db'}"
    assert predict.run(model, str(folder), "whole.csv", store, "cpu") == 12
    info = predict.model_info(model, store)
    monkeypatch.setattr(predict, "BLOCK_BYTES", 3 * 4 * int(np.prod(info.metadata["shape"])))
    capsys.readouterr()
    assert predict.run(model, str(folder), "blocks.csv", store, "cpu") == 12  # 5 blocks
    # the same rows, labels and scores; the scores to float32 rounding, which depends on the
    # batch size in some CPU kernels (AVX-512: 0.37515372 in a batch of 12, ...66 in one of 3)
    blocks, whole = pd.read_csv(root / "blocks.csv"), pd.read_csv(root / "whole.csv")
    assert list(blocks.columns) == list(whole.columns) and len(whole) == 12
    text = ["input", "label"]
    assert blocks[text].equals(whole[text])
    np.testing.assert_allclose(blocks.drop(columns=text), whole.drop(columns=text), atol=1e-6)
    note = "skipped 3 unreadable image(s): 005b.png, 005c.png, 005d.png"
    assert capsys.readouterr().err.count(note) == 1


def test_mlflow_models_serve_answers_raw_json_rows(project):
    """A real `mlflow models serve` of the champion on loopback, sent the raw test rows as
    JSON: tables with text columns, nulls for missing values and the target column along;
    images as nested lists of raw pixels."""
    import urllib.request

    from tests.conftest import free_port, wait_until_up

    kind, root = project
    rows, actual = raw_test_rows(kind, root)
    if kind == "table_classes":
        assert rows["clinic"].isna().any() and rows["mean texture"].isna().any()
    if isinstance(rows, pd.DataFrame):
        body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    else:
        body = {"inputs": rows.tolist()}
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve"]
    cmd += ["-m", f"models:/{_name(kind)}@champion", "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    # MLflow starts uvicorn by name: the venv's tools come first on PATH, as under `make`
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    log = (root / "serve.log").open("w")
    server = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert_reproduces(kind, root, pd.DataFrame(answer["predictions"]), actual)


# Loads the champion in a fresh interpreter that cannot import this project's packages (the
# editable install's finder removed) and scores the raw rows in ROWS (a pickle-free .npz/.csv)
WITHOUT_PROJECT = """
import importlib.util, json, sys
editable = lambda finder: getattr(finder, "__module__", "").startswith("__editable")
sys.meta_path = [f for f in sys.meta_path if not editable(f)]
assert importlib.util.find_spec("pipeline") is None and importlib.util.find_spec("models") is None
import mlflow, numpy as np, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2], model_config={"predict_device": "cpu"})
rows = sys.argv[3]
data = pd.read_csv(rows) if rows.endswith(".csv") else np.load(rows)["x"]
out = model.predict(data)
out.to_csv(sys.argv[4], index=False)
modules = ("pipeline.tracking.serving", "models.registry")
print(json.dumps({m: sys.modules[m].__file__ for m in modules}))
"""


def test_the_registered_model_needs_nothing_from_the_project(project, tmp_path):
    kind, root = project
    rows, actual = raw_test_rows(kind, root)
    if isinstance(rows, pd.DataFrame):
        path = tmp_path / "rows.csv"
        rows.to_csv(path, index=False)
    else:
        path = tmp_path / "rows.npz"
        np.savez(path, x=rows)
    args = [f"sqlite:///{root / 'mlflow.db'}", f"models:/{_name(kind)}@champion", str(path)]
    cmd = [sys.executable, "-c", WITHOUT_PROJECT, *args, str(tmp_path / "out.csv")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout.strip().splitlines()[-1])
    for file in files.values():  # the model's own copy of the code, not this project's
        assert not file.startswith(str(Path(__file__).resolve().parents[1])), file
        assert "/code/" in file
    predictions = pd.read_csv(tmp_path / "out.csv", dtype={"label": str})
    assert_reproduces(kind, root, predictions, actual)


def _bad_inputs(root: Path) -> dict:
    """name -> (file or folder to predict on, what the one error line must say)."""
    rows, _ = raw_test_rows("table_classes", root)
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    rows.drop(columns=["clinic"]).to_csv(bad / "no_clinic.csv", index=False)
    typed = rows.astype({"mean radius": object})
    typed.loc[3, "mean radius"] = "large"
    typed.to_csv(bad / "text_in_numbers.csv", index=False)
    (bad / "empty.csv").write_text("")
    rows.head(0).to_csv(bad / "header_only.csv", index=False)
    (bad / "rows.txt").write_text("mean radius\n1.0\n")
    np.savez(bad / "two.npz", a=np.zeros((2, 7)), b=np.zeros((2, 7)))
    return {
        "missing column": (bad / "no_clinic.csv", "missing column(s) 'clinic'"),
        "wrong type": (bad / "text_in_numbers.csv", "column 'mean radius' holds 'large' (row 3)"),
        "empty file": (bad / "empty.csv", "the file is empty"),
        "no rows": (bad / "header_only.csv", "it has no rows"),
        "unknown extension": (bad / "rows.txt", ".txt: expected a .csv, .parquet, .npy, .npz"),
        "ambiguous npz": (bad / "two.npz", "name one with --array NAME"),
        "no such file": (bad / "missing.csv", "no such file or folder"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing column",
        "wrong type",
        "empty file",
        "no rows",
        "unknown extension",
        "ambiguous npz",
        "no such file",
    ],
)
def test_bad_predict_inputs_are_one_clear_line(case, tmp_path_factory):
    root = trained("table_classes", tmp_path_factory)
    path, message = _bad_inputs(root)[case]
    proc = _predict(root, "table_classes", path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: predict: --input {path}: ") and message in lines[0]


def test_an_unreadable_image_is_a_clear_error(tmp_path_factory):
    root = trained("image_folder", tmp_path_factory)
    folder = root / "only_broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG broken")
    proc = _predict(root, "image_folder", folder)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"error: predict: --input {folder}: none of its 1 images could be read"
    )
