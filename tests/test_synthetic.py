"""Generated training data: a low-data version of an image dataset (`split.train_fraction`)
and a synthetic dataset (params.yaml's `synthetic`: its base's splits plus class-conditional
images of a trained GAN or VAE), made by synthesize@<name> and used as any other dataset."""

import copy
import filecmp
import json

import numpy as np
import pytest
import yaml

from pipeline import paths
from pipeline.config import load_params
from pipeline.data import datasets
from pipeline.data.splits import keep_fraction
from pipeline.errors import PipelineError
from tests.conftest import TINY, make_project, run, tiny_model, will_run, write_params


def test_keep_fraction_keeps_a_seeded_share_of_each_class():
    y = np.repeat(np.arange(4), [40, 20, 10, 2])
    index = np.arange(0, 2 * len(y), 2)  # a split's rows in the raw data
    labels = np.zeros(2 * len(y), np.int64)
    labels[index] = y
    kept = keep_fraction(index, labels, 0.1, seed=3)
    assert set(kept) <= set(index) and list(kept) == sorted(kept)
    assert np.bincount(labels[kept]).tolist() == [4, 2, 1, 1]  # at least one of each class
    assert np.array_equal(kept, keep_fraction(index, labels, 0.1, seed=3))
    assert not np.array_equal(kept, keep_fraction(index, labels, 0.1, seed=4))
    assert keep_fraction(index, labels, 1.0, seed=3) is index


def test_a_low_data_dataset_keeps_the_whole_datasets_val_and_test(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {**copy.deepcopy(TINY), "datasets": {"digits": {"source": "sklearn_digits"}}}
    raw["datasets"]["few"] = {"source": "sklearn_digits", "split": {"train_fraction": 0.1}}
    params = load_params(write_params(tmp_path / "params.yaml", raw))
    for name in ("digits", "few"):
        datasets.ingest(name, params.datasets[name])
        datasets.preprocess(name, params.datasets[name])
    whole, few = datasets.load_schema("digits"), datasets.load_schema("few")
    for split in ("val", "test"):
        assert filecmp.cmp(
            paths.split_dir("digits", split) / "x.npy", paths.split_dir("few", split) / "x.npy"
        )
    index = {n: datasets.load_arrays(n, "train")["index"] for n in ("digits", "few")}
    assert set(index["few"]) < set(index["digits"])
    assert few["counts"]["train"] == sum(
        max(1, round(n * 0.1)) for n in whole["class_counts"]["train"]
    )
    # the normalisation is fitted on the images it keeps; the schema says what was kept
    assert few["normalization"] != whole["normalization"]
    assert few["split"]["train_fraction"] == 0.1 and "train_fraction" not in whole["split"]


def synthetic_params() -> dict:
    raw = copy.deepcopy(TINY)
    raw["defaults"]["tracking"] = {"log_model": False}
    raw["datasets"]["few"] = {"source": "sklearn_digits", "split": {"train_fraction": 0.2}}
    raw["synthetic"] = {"few_gan": {"base": "few", "from": "gan_digits", "per_class": 3}}
    gan = {**tiny_model("gan"), "conditional": True}
    raw["experiments"] = {
        "gan_digits": {"dataset": "digits", "model": gan, "train": {"epochs": 1}},
        "mlp_few": {"dataset": "few"},
        "mlp_few_gan": {"dataset": "few_gan"},
    }
    return raw


@pytest.mark.slow
@pytest.mark.integration
def test_dvc_repro_trains_on_a_tenth_of_the_data_with_and_without_gan_images(tmp_path):
    raw = synthetic_params()
    project = make_project(tmp_path / "p", raw)
    proc = run(["dvc", "repro"], project)
    ran = [ln.split("'")[1] for ln in proc.stdout.splitlines() if ln.startswith("Running stage")]
    assert ran.index("train@gan_digits") < ran.index("synthesize@few_gan")
    assert ran.index("synthesize@few_gan") < ran.index("train@mlp_few_gan")
    assert "synthesize@few_gan: few's " in proc.stdout

    base, made = (project / paths.processed_dir(n) for n in ("few", "few_gan"))
    schema = json.loads((made / "schema.json").read_text())
    real = json.loads((base / "schema.json").read_text())["counts"]["train"]
    assert schema["synthetic"] == {
        "from": "gan_digits",
        "per_class": 3,
        "seed": 0,
        "base": "few",
        "real_train": real,
        "generated": 30,
    }
    assert schema["counts"] == {**schema["counts"], "train": real + 30}
    # val, test and the preprocessing are the base's, byte for byte
    for name in ("val/x.npy", "val/y.npy", "test/x.npy", "test/y.npy", paths.PREPROCESSOR):
        assert filecmp.cmp(base / name, made / name, shallow=False), name
    x, y = np.load(made / "train/x.npy"), np.load(made / "train/y.npy")
    index = np.load(made / "train/index.npy")
    assert x.dtype == np.uint8 and x.shape == (real + 30, 1, 8, 8)
    assert np.array_equal(x[:real], np.load(base / "train/x.npy"))
    assert np.array_equal(y[real:], np.arange(30) % 10) and (index[real:] == -1).all()
    assert x[real:].max() <= 16  # pixels in the digits' own range (0..16)
    # the generated rows are the trained generator's samples, drawn with the seed, as pixels
    script = (  # the GAN's own sampling: images in [-1, 1], sample i of class i % 10
        "import numpy as np, torch; from pipeline.experiment import load_trained_model;"
        "g = torch.Generator().manual_seed(0);"
        "x = load_trained_model('gan_digits').eval().sample(30, generator=g).numpy();"
        "np.save('again.npy', np.rint((x + 1) / 2 * 16).astype(np.uint8))"
    )
    run(["python", "-c", script], project)
    assert np.array_equal(np.load(project / "again.npy"), x[real:])
    # no judge: evaluate@ finds its folder, saying why
    judge = json.loads((project / paths.judge_info_file("few_gan")).read_text())
    assert judge["applicable"] is False and "synthetic" in judge["reason"]

    # the experiment on it reports where its data came from, beside the same model without
    summary = json.loads((project / paths.summary_file("mlp_few_gan")).read_text())
    assert summary["data"]["synthetic"]["generated"] == 30
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    [made_hash] = [  # (its other output: the folder saying it has no judge)
        out["md5"]
        for out in lock["stages"]["synthesize@few_gan"]["outs"]
        if out["path"] == str(paths.processed_dir("few_gan"))
    ]
    assert summary["data"]["dvc_hash"] == made_hash  # the data's version, as for any dataset
    report = (project / paths.REPORT_MD).read_text()
    assert f"`few`'s {real} train images + 30 generated by `gan_digits` (3 a class)" in report
    assert "without the generated images (`mlp_few`, same model): test/accuracy " in report
    assert "![generated training images](../data/processed/few_gan/samples.png)" in report
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    [made_run] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "attributes.run_name = 'few_gan/synthesize'",
    )
    assert made_run.info.status == "FINISHED"
    assert made_run.data.metrics["train/generated"] == 30
    assert "samples.png" in {a.path for a in client.list_artifacts(made_run.info.run_id)}

    # more generated images: the synthetic dataset and what learns from it, nothing else
    raw["synthetic"]["few_gan"]["per_class"] = 5
    write_params(project / "params.yaml", raw)
    expected = {f"{s}@mlp_few_gan" for s in ("tune", "train", "evaluate")}
    expected |= {"synthesize@few_gan", "report"}
    assert will_run(run(["python", "-m", "pipeline", "check"], project).stdout) == expected
    proc = run(["dvc", "repro"], project)
    again = [ln.split("'")[1] for ln in proc.stdout.splitlines() if ln.startswith("Running stage")]
    assert set(again) == expected
    assert len(np.load(made / "train/y.npy")) == real + 50


def test_synthesize_refuses_a_generator_of_other_images(tmp_path, monkeypatch):
    """Checked before any model is loaded: a generator that learnt other classes or another
    image shape cannot make training images for the base."""
    from pipeline.stages import synthesize

    monkeypatch.chdir(tmp_path)
    raw = synthetic_params()
    params = load_params(write_params(tmp_path / "params.yaml", raw))
    schema = {"task": "classification", "input_shape": [1, 8, 8], "num_classes": 10}
    for name, classes in (("few", [str(d) for d in range(10)]), ("digits", list("abcdefghij"))):
        paths.processed_dir(name).mkdir(parents=True)
        paths.schema_file(name).write_text(json.dumps({**schema, "classes": classes}))
    with pytest.raises(PipelineError, match=r"'gan_digits' learnt 'digits' \(classes \['a'"):
        synthesize.run(params, "few_gan")
    assert not paths.processed_dir("few_gan").exists()


@pytest.mark.parametrize(
    "edit, problem",
    [
        (
            lambda r: r["synthetic"]["few_gan"].update({"from": "mlp_few"}),
            "synthetic.few_gan.from: 'mlp_few' is a mlp experiment that cannot draw images of a "
            "class asked for; name one whose model is a gan or vae with conditional: true",
        ),
        (
            lambda r: r["synthetic"]["few_gan"].update(base="names"),
            "synthetic.few_gan.base: 'names' is not in `datasets`; declared: digits, few",
        ),
        (
            lambda r: r["synthetic"]["few_gan"].update(frm="gan_digits"),
            "synthetic.few_gan.frm: unknown key; did you mean 'from'?",
        ),
        (
            lambda r: r["experiments"]["gan_digits"].update(dataset="few_gan"),
            "experiments.gan_digits.dataset: 'few_gan' is a synthetic dataset, for classifiers; "
            "gan learns from real images: use 'few'",
        ),
        (
            lambda r: r["synthetic"].update(few={"base": "digits", "from": "gan_digits"}),
            "synthetic.few: also a name in `datasets`; give it another name",
        ),
    ],
)
def test_bad_synthetic_params_name_the_key(tmp_path, edit, problem):
    raw = synthetic_params()
    edit(raw)
    with pytest.raises(PipelineError) as err:
        load_params(write_params(tmp_path / "params.yaml", raw))
    assert problem in str(err.value)


def test_a_conditional_vae_can_make_the_data_but_not_an_unconditional_one(tmp_path):
    raw = synthetic_params()
    raw["experiments"]["vae"] = {"dataset": "digits", "model": {"name": "vae"}}
    raw["synthetic"]["few_gan"]["from"] = "vae"
    with pytest.raises(PipelineError, match="'vae' is a vae experiment that cannot draw"):
        load_params(write_params(tmp_path / "params.yaml", raw))
    raw["experiments"]["vae"]["model"]["conditional"] = True
    params = load_params(write_params(tmp_path / "params.yaml", raw))
    assert params.synthetic["few_gan"].from_ == "vae"
