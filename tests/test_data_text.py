"""The `text` source: tokenizers, a train-only vocabulary, padding, and an LSTM that learns
sentiment from a CSV the test writes, through the real stages."""

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import paths
from pipeline.config import load_params
from pipeline.data import datasets
from pipeline.errors import PipelineError
from pipeline.params.datasets import TextDataset

GOOD = ["great", "lovely", "superb", "fun", "brilliant"]
BAD = ["awful", "boring", "dull", "terrible", "bland"]
FILLER = ["the", "film", "was", "plot", "acting", "and", "really", "quite"]


def reviews(n=240, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = list(rng.choice(FILLER, 6)) + list(rng.choice(GOOD if i % 2 else BAD, 2))
        rng.shuffle(words)
        rows.append({"review": " ".join(words).capitalize() + "!", "sentiment": label})
    return pd.DataFrame(rows)


def text_cfg(**kw) -> TextDataset:
    return TextDataset.model_validate(
        {
            "source": "text",
            "path": "reviews.csv",
            "text_column": "review",
            "label_column": "sentiment",
            "max_length": 12,
            **kw,
        }
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_vocabulary_comes_from_train_and_texts_are_left_padded(workdir):
    frame = reviews()
    rare = [f"rareword{i}" for i in range(20)]  # each appears in exactly one review
    frame.loc[:19, "review"] = [f"{w} was great!" for w in rare]
    frame.to_csv("reviews.csv", index=False)
    cfg = text_cfg()
    datasets.ingest("rev", cfg)
    datasets.preprocess("rev", cfg)
    schema = datasets.load_schema("rev")
    assert schema["vocab"][:2] == ["<pad>", "<unk>"] and "!" in schema["vocab"]
    assert schema["classes"] == ["neg", "pos"] and schema["input_shape"] == [12]
    known = sum(w in schema["vocab"] for w in rare)
    unknown = {s: int((datasets.load_split("rev", s)[0] == 1).sum()) for s in paths.SPLITS}
    assert unknown["train"] == 0  # every train token is in the vocabulary
    assert unknown["val"] + unknown["test"] == len(rare) - known > 0  # the rest were unseen
    x, _ = datasets.load_split("rev", "train")
    assert (x[:, -1] != 0).all() and (x == 0).any()  # padding sits on the left


def test_char_tokenizer_min_freq_and_truncation(workdir):
    reviews().to_csv("reviews.csv", index=False)
    cfg = text_cfg(tokenizer="char", min_freq=1000, max_length=5)
    datasets.ingest("rev", cfg)
    datasets.preprocess("rev", cfg)
    schema = datasets.load_schema("rev")
    assert set(schema["vocab"][2:]) <= set("abcdefghijklmnopqrstuvwxyz !")
    assert schema["truncated"] == 240  # every review is longer than 5 characters
    x, _ = datasets.load_split("rev", "test")
    assert x.shape[1] == 5


def test_bad_text_input_is_one_clear_error(workdir):
    frame = reviews()
    frame.loc[3, "review"] = " "
    frame.to_csv("reviews.csv", index=False)
    datasets.ingest("rev", text_cfg())
    with pytest.raises(PipelineError, match="1 rows have an empty text or label"):
        datasets.preprocess("rev", text_cfg())
    assert not paths.processed_dir("rev").exists()
    with pytest.raises(PipelineError, match=r"column\(s\) 'body' not in reviews.csv"):
        datasets.ingest("rev2", text_cfg(text_column="body"))


@pytest.mark.slow
def test_lstm_learns_sentiment_through_the_real_stages(workdir):
    from pipeline.stages import evaluate, ingest, preprocess, train

    reviews(n=400).to_csv("reviews.csv", index=False)
    (workdir / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "rev": {
                        "source": "text",
                        "path": "reviews.csv",
                        "text_column": "review",
                        "label_column": "sentiment",
                        "max_length": 12,
                    }
                },
                "defaults": {"device": "cpu", "train": {"epochs": 20}},
                "experiments": {
                    "lstm_rev": {"dataset": "rev", "model": {"name": "rnn", "hidden_size": 32}}
                },
            }
        )
    )
    params = load_params(workdir / "params.yaml")
    ingest.run(params, "rev")
    preprocess.run(params, "rev")
    train.run(params, "lstm_rev")
    assert evaluate.run(params, "lstm_rev")["test/accuracy"] >= 0.9


def test_cldr_names_are_labelled_by_language_and_none_is_shared(workdir):
    from pipeline.params.datasets import CldrNamesDataset

    cfg = CldrNamesDataset.model_validate({"source": "cldr_names", "locales": ["fr", "de"]})
    datasets.ingest("names", cfg)
    raw = pd.read_parquet(paths.raw_table_file("names"))
    assert set(raw["language"]) == {"fr", "de"}
    assert "Allemagne" in set(raw["text"]) and "Deutschland" in set(raw["text"])
    assert raw["text"].is_unique  # "Portugal", written alike by both, is left out
    assert "Portugal" not in set(raw["text"])
    datasets.preprocess("names", cfg)
    schema = datasets.load_schema("names")
    assert schema["classes"] == ["de", "fr"] and schema["tokenizer"] == "char"
    with pytest.raises(PipelineError, match=r"datasets.bad.locales: 'xx' is not a CLDR locale"):
        datasets.ingest("bad", cfg.model_copy(update={"locales": ("fr", "xx")}))
    assert not paths.raw_dir("bad").exists()
