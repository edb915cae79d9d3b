"""Ingest and preprocess on the bundled digits: stratified seeded splits, train-only statistics."""

import json

import numpy as np
import pytest

from pipeline import paths
from pipeline.atomic import atomic_dir
from pipeline.data import datasets
from pipeline.errors import PipelineError
from pipeline.params.datasets import DigitsDataset, SeriesDataset, TextCorpusDataset

CFG = DigitsDataset.model_validate(
    {"source": "sklearn_digits", "split": {"val": 0.15, "test": 0.2}}
)


@pytest.fixture
def digits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets.ingest("digits", CFG)
    datasets.preprocess("digits", CFG)
    return tmp_path


def test_splits_are_disjoint_stratified_and_complete(digits):
    schema = datasets.load_schema("digits")
    assert schema["input_shape"] == [1, 8, 8]
    assert schema["dtypes"] == {"x": "uint8", "y": "int64", "index": "int64"}
    assert schema["num_classes"] == 10
    counts = schema["counts"]
    assert sum(counts.values()) == 1797
    assert counts["test"] == 360  # 20 %
    for split in paths.SPLITS:
        frac = np.array(schema["class_counts"][split]) / counts[split]
        assert np.all(np.abs(frac - 0.1) < 0.02), split  # every class near its 10 % share
    # no sample is in two splits
    rows = [datasets.load_split("digits", s)[0].reshape(counts[s], -1) for s in paths.SPLITS]
    assert len({r.tobytes() for r in np.concatenate(rows)}) > 1700
    # each split names its rows of the raw data: together, every row exactly once
    index = np.concatenate([datasets.load_arrays("digits", s)["index"] for s in paths.SPLITS])
    assert sorted(index.tolist()) == list(range(1797))


def test_normalisation_uses_train_statistics_only(digits):
    train_x, _ = datasets.load_split("digits", "train")
    test_x, _ = datasets.load_split("digits", "test")
    assert abs(train_x.mean()) < 1e-4 and abs(train_x.std() - 1) < 1e-3
    assert abs(test_x.mean()) > 1e-4  # test was not re-centred on itself
    norm = json.loads(paths.schema_file("digits").read_text())["normalization"]
    assert norm["fitted_on"] == "train"


def test_images_are_stored_as_ingested_and_scaled_as_read(digits):
    """The split file holds the raw 8-bit pixels (a quarter of float32's bytes); every way of
    reading it (whole, rows from disk, any rows) gives the normalised float32 inputs."""
    raw = np.load(paths.raw_array_file("digits", "x"))
    stored = np.load(paths.split_dir("digits", "train") / "x.npy")
    index = datasets.load_arrays("digits", "train")["index"]
    assert stored.dtype == np.uint8 and np.array_equal(stored, raw[index])
    norm = datasets.load_schema("digits")["normalization"]
    expected = ((stored.astype(np.float32) / np.float32(16)) - np.float32(norm["mean"][0])) / (
        np.float32(norm["std"][0])
    )
    whole, _ = datasets.load_split("digits", "train")
    assert whole.dtype == np.float32 and np.array_equal(whole, expected)
    rows, _ = datasets.load_split("digits", "train", on_disk=True)
    assert np.array_equal(rows[:5], expected[:5]) and np.array_equal(rows[[7, 2]], expected[[7, 2]])
    assert rows.nbytes == expected.nbytes  # the memory budget counts what training holds
    assert datasets.inputs_bytes("digits", ("train",), on_disk=True) == stored.nbytes


def test_split_is_seeded(digits):
    first = datasets.load_split("digits", "test")[1]
    first_hash = datasets.load_schema("digits")["content_hash"]
    datasets.preprocess("digits", CFG)
    assert np.array_equal(first, datasets.load_split("digits", "test")[1])
    assert datasets.load_schema("digits")["content_hash"] == first_hash
    other = CFG.model_copy(update={"split": CFG.split.model_copy(update={"seed": 7})})
    datasets.preprocess("digits", other)
    assert not np.array_equal(first, datasets.load_split("digits", "test")[1])
    assert datasets.load_schema("digits")["content_hash"] != first_hash


def test_missing_input_names_the_stage_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        PipelineError, match=r"data/raw/digits/meta.json not found; run `dvc repro ingest@digits`"
    ):
        datasets.preprocess("digits", CFG)


def test_failed_write_leaves_the_previous_output_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dir left behind


SERIES = SeriesDataset.model_validate(
    {
        "source": "statsmodels",
        "name": "sunspots",
        "lookback": 12,
        "horizon": 3,
        "split": {"val": 0.15, "test": 0.15},
    }
)


def test_series_split_is_chronological_and_scaled_on_train_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets.ingest("sun", SERIES)
    datasets.preprocess("sun", SERIES)
    schema = datasets.load_schema("sun")
    parts = {s: datasets.load_arrays("sun", s) for s in paths.SPLITS}
    # every target of a split lies after every target of the split before it
    last_train = parts["train"]["t"].max() + SERIES.horizon - 1
    assert last_train < parts["val"]["t"].min()
    assert parts["val"]["t"].max() + SERIES.horizon - 1 < parts["test"]["t"].min()
    assert np.all(np.diff(parts["test"]["t"]) > 0)  # kept in time order
    values, years, _ = datasets.read_raw("sun")
    train_steps = schema["scaler"]["train_steps"]
    assert years[train_steps - 1] <= last_train < years[train_steps]
    assert schema["scaler"]["mean"] == pytest.approx(values[:train_steps].mean(), rel=1e-5)
    assert schema["scaler"]["mean"] != pytest.approx(values.mean(), rel=1e-3)
    assert parts["train"]["x"].shape[1:] == (12, 1) and parts["test"]["y"].shape[1] == 3
    # a target window is the scaled series itself
    mean, std = schema["scaler"]["mean"], schema["scaler"]["std"]
    first = int(np.searchsorted(years, parts["test"]["t"][0]))
    assert parts["test"]["y"][0] * std + mean == pytest.approx(values[first : first + 3], rel=1e-4)


def test_series_too_short_for_the_window_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long = SERIES.model_copy(update={"lookback": 250})
    datasets.ingest("sun", long)
    with pytest.raises(PipelineError, match="too short for lookback=250"):
        datasets.preprocess("sun", long)
    assert not paths.processed_dir("sun").exists()


DOCS = TextCorpusDataset.model_validate(
    {
        "source": "python_docstrings",
        "modules": ["json", "textwrap"],
        "seq_len": 16,
        "split": {"val": 0.1, "test": 0.1},
    }
)


def test_text_corpus_targets_are_shifted_inputs_and_vocab_comes_from_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets.ingest("docs", DOCS)
    datasets.preprocess("docs", DOCS)
    schema = datasets.load_schema("docs")
    assert schema["task"] == "language_model" and schema["input_shape"] == [16]
    codes = datasets.read_raw("docs")[0]
    text = "".join(map(chr, codes))
    assert "JSON" in text  # json's own module docstring
    train_chars = set(text[: schema["chars"]["train"]])
    assert set(schema["vocab"][1:]) == train_chars
    train = datasets.load_arrays("docs", "train")
    assert np.array_equal(train["x"][0, 1:], train["y"][0, :-1])  # next-character targets
    vocab = schema["vocab"]
    assert "".join(vocab[i] for i in train["x"][0]) == text[:16]
    assert train["char_counts"].sum() == schema["chars"]["train"]


def test_images_of_an_older_preprocess_are_refused_not_scaled_twice(digits):
    """Normalised float32 images (what preprocess wrote before it kept the pixels) would be
    scaled a second time on read: one error naming the stage to run instead."""
    x_file = paths.split_dir("digits", "train") / "x.npy"
    np.save(x_file, np.load(x_file).astype(np.float32))
    with pytest.raises(PipelineError, match=r"not the 8-bit pixels.*dvc repro preprocess@digits"):
        datasets.load_split("digits", "train")
