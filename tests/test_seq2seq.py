"""Sequence to sequence: the `dates` source (Babel's CLDR data), a user's CSV of pairs, and an
encoder-decoder trained through the real stages whose registered model translates raw text."""

import datetime as dt
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
from pipeline.data import datasets
from pipeline.errors import PipelineError
from pipeline.params.datasets import DatesDataset, Seq2SeqDataset


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dates_cfg(**kw) -> DatesDataset:
    return DatesDataset.model_validate({"source": "dates", "samples": 400, **kw})


def test_dates_are_written_by_babel_and_each_split_holds_its_own_dates(workdir):
    from babel.dates import format_date

    cfg = dates_cfg()
    datasets.ingest("d", cfg)
    raw = pd.read_parquet(paths.raw_table_file("d"))
    assert len(raw) == 400 and raw["target"].is_unique
    assert set(raw["locale"]) == set(cfg.locales) and set(raw["format"]) == set(cfg.formats)
    for row in raw.head(20).itertuples():  # each source is CLDR's rendering of its target
        day = dt.date.fromisoformat(row.target)
        assert row.source == format_date(day, row.format, locale=row.locale)
    assert raw["source"].str.contains("décembre|Dezember|diciembre|dicembre|december").any()

    datasets.preprocess("d", cfg)
    schema = datasets.load_schema("d")
    assert schema["task"] == "seq2seq" and schema["ambiguous_sources"] == 0
    assert schema["target_vocab"][:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert set(schema["target_vocab"][4:]) == set("0123456789-")
    splits = {s: datasets.load_arrays("d", s) for s in paths.SPLITS}
    dates = {s: set(a["target_text"].tolist()) for s, a in splits.items()}
    assert not dates["train"] & dates["test"] and not dates["train"] & dates["val"]
    assert sum(map(len, dates.values())) == 400
    y = splits["test"]["y"]
    assert (y[:, 0] == 2).all() and ((y == 3).sum(1) == 1).all()  # BOS first, one EOS
    assert y.shape[1] == schema["horizon"] + 1 == 10 + 2  # YYYY-MM-DD, EOS, and BOS


def test_bad_dates_params_are_one_clear_error_that_writes_nothing(workdir):
    with pytest.raises(PipelineError, match=r"datasets.d.locales: 'xx_YY' is not a CLDR locale"):
        datasets.ingest("d", dates_cfg(locales=["en_US", "xx_YY"]))
    with pytest.raises(PipelineError, match=r"datasets.d.samples: 400 distinct dates .* hold 365"):
        datasets.ingest("d", dates_cfg(years=[2001, 2001]))
    assert not paths.raw_dir("d").exists()
    with pytest.raises(ValueError, match="years"):
        dates_cfg(years=[2020, 2010])


def pairs_frame(n=120) -> pd.DataFrame:
    """English number words -> French ones: a user's own word-level pairs."""
    en = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    fr = ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"]
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(n):
        k = rng.integers(0, 10, 3)
        rows.append((" ".join(en[i] for i in k) + " .", " ".join(fr[i] for i in k) + " ."))
    return pd.DataFrame(rows, columns=["english", "french"]).drop_duplicates("french")


def test_a_users_csv_of_pairs_with_word_tokens(workdir):
    frame = pairs_frame()
    frame.to_csv("pairs.csv", index=False)
    cfg = Seq2SeqDataset.model_validate(
        {
            "source": "seq2seq",
            "path": "pairs.csv",
            "source_column": "english",
            "target_column": "french",
            "tokenizer": "word",
            "max_target_length": 3,
        }
    )
    datasets.ingest("p", cfg)
    datasets.preprocess("p", cfg)
    schema = datasets.load_schema("p")
    assert "zéro" in schema["target_vocab"] and "zero" in schema["source_vocab"]
    assert schema["input_shape"] == [4] and schema["horizon"] == 3 + 1
    assert schema["truncated"] == {"source": 0, "target": len(frame)}  # "." is the 4th word
    test = datasets.load_arrays("p", "test")
    assert set(test["target_text"].tolist()) <= set(frame["french"])  # raw text kept whole

    frame.loc[5, "french"] = " "
    frame.to_csv("pairs.csv", index=False)
    datasets.ingest("p2", cfg)
    with pytest.raises(PipelineError, match=r"1 row\(s\) have an empty 'english' or 'french'"):
        datasets.preprocess("p2", cfg)
    assert not paths.processed_dir("p2").exists()
    with pytest.raises(PipelineError, match=r"column\(s\) 'german' not in pairs.csv"):
        datasets.ingest("p3", cfg.model_copy(update={"target_column": "german"}))


@pytest.mark.slow
@pytest.mark.integration
def test_a_gru_learns_dates_and_its_registered_model_translates_raw_text(workdir):
    """ingest, preprocess, train and evaluate as `dvc repro` runs them; then the registered
    model, loaded by MLflow, and `python -m pipeline predict` turn raw dates into ISO ones
    exactly as evaluate's greedy decoding did."""
    import mlflow

    from pipeline.stages import evaluate, ingest, preprocess, train

    params = {
        "datasets": {"dates": {"source": "dates", "samples": 3000}},
        "defaults": {"device": "cpu", "train": {"epochs": 8, "batch_size": 64}},
        "experiments": {
            "gru_dates": {
                "dataset": "dates",
                "model": {"name": "seq2seq", "hidden_size": 64, "embedding_dim": 32},
                "train": {"optimizer": {"lr": 0.005}},
            }
        },
    }
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    assert ingest.main(["dates"]) == 0 and preprocess.main(["dates"]) == 0
    assert train.main(["gru_dates"]) == 0 and evaluate.main(["gru_dates"]) == 0
    metrics = read_test_metrics(Path("."), "gru_dates")
    assert metrics["test/exact_match"] >= 0.8, metrics
    assert metrics["test/bleu"] > metrics["test/nearest/bleu"]
    assert metrics["test/beam/exact_match"] >= metrics["test/exact_match"] - 0.05
    figures = json.loads(paths.summary_file("gru_dates").read_text())["figures"]
    assert {"alignment", "translations", "curves"} <= set(figures)

    test = datasets.load_arrays("dates", "test")
    sources = test["source_text"].tolist()
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/dl-pipeline.gru_dates@champion")
    translated = model.predict(pd.DataFrame({"source": sources}))["translation"].tolist()
    exact = np.mean([t == r for t, r in zip(translated, test["target_text"], strict=True)])
    assert exact == pytest.approx(metrics["test/exact_match"])

    pd.DataFrame({"source": sources[:20], "note": "ignored"}).to_csv("raw.csv", index=False)
    cmd = [sys.executable, "-m", "pipeline", "predict", "--model"]
    cmd += ["models:/dl-pipeline.gru_dates@champion", "--input", "raw.csv", "--output", "out.csv"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert pd.read_csv("out.csv")["translation"].tolist() == translated[:20]
