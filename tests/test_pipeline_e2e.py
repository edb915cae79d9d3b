"""A real `dvc repro` of the shipped pipeline (shrunk params) in a fresh git + DVC repository.

Tests in this module run in order on one shared project: the no-op check comes before the
tests that change params.
"""

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from benchmarks.common import read_test_metrics
from pipeline import paths
from pipeline.tasks.kinds import KINDS
from tests.conftest import (
    ROOT,
    TINY,
    make_project,
    output_md5s,
    run,
    shipped_params,
    shrink,
    wait_for_file,
    will_run,
    write_params,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPERIMENTS = tuple(shipped_params()["experiments"])
DATASETS = tuple(shipped_params()["datasets"])
SYNTHETIC = tuple(shipped_params().get("synthetic", {}))
DATASET_STAGES = ("ingest", "preprocess", "judge")
# metrics every experiment of a task reports (test split)
TASK_METRICS = {
    "classification": {"test/accuracy", "test/f1_macro", "test/precision_macro"},
    "forecasting": {
        "test/rmse",
        "test/mae",
        "test/r2",
        "test/rmse_ratio_persistence",
        "test/rmse_ratio_ar",
    },
    "language_model": {"test/perplexity", "test/bits_per_char", "test/perplexity_ratio_unigram"},
    "vae": {
        "test/elbo",
        "test/kl",
        "test/judge_accuracy_on_reconstructions",
        "test/frechet_distance",
    },
    "gan": {"test/frechet_distance", "test/judge_confidence", "test/class_coverage"},
    "diffusion": {"test/frechet_distance", "test/judge_confidence", "test/class_coverage"},
    "seq2seq": {
        "test/exact_match",
        "test/bleu",
        "test/chrf",
        "test/beam/bleu",
        "test/nearest/bleu",
    },
}
# figures of one model family or one shipped setting, beside those of the task
EXTRA_FIGURES = {
    "cnn_digits": {"filters", "feature_maps"},
    "cnn_digits_robust": {"filters", "feature_maps"},
    "cnn_digits_tenth": {"filters", "feature_maps"},
    "cnn_digits_tenth_gan": {"filters", "feature_maps"},
    "transformer_digits": {"attention"},
    "transformer_docs": {"attention"},
    "vae_digits_anomaly": {"roc"},
}
# a two-class table: its ROC curve, and no attacks (they are for images)
# and text read by a transformer: its attention, no attacks
ONLY_FIGURES = {
    "mlp_cancer": {"confusion", "curves", "roc"},
    "transformer_names": {"confusion", "curves", "attention"},
}
TUNED = tuple(
    e for e, x in shipped_params()["experiments"].items() if x.get("tune", {}).get("enabled")
)
# experiments trained on images ((N, C, H, W) digits, a tenth of them, or those and generated
# ones): the only ones with an input preview
IMAGE_INPUTS = tuple(
    e
    for e, x in shipped_params()["experiments"].items()
    if x["dataset"] in ("digits", "digits_tenth", *SYNTHETIC)
)
FIGURES = {
    "classification": {"confusion", "curves", "attacks"},  # the shipped attacks
    "forecasting": {"forecast", "curves"},
    "language_model": {"sample", "curves"},
    "vae": {"samples", "reconstructions", "interpolation", "curves"},
    "gan": {"samples", "curves"},
    "diffusion": {"samples", "curves"},
    "seq2seq": {"translations", "alignment", "curves"},
}


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def mlflow_runs(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name(shipped_params()["defaults"]["tracking"]["experiment_name"])
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def summary(project, exp: str) -> dict:
    return json.loads((project / paths.summary_file(exp)).read_text())


def test_repro_runs_every_stage_and_writes_metrics(repro_project):
    log = (repro_project / "first_repro.log").read_text()
    ran = stages_run(log)
    assert "is empty" not in log  # untuned experiments' tune@ outputs say so; none is empty
    expected = [f"{s}@{d}" for d in DATASETS for s in DATASET_STAGES]
    expected += [f"{s}@{e}" for e in EXPERIMENTS for s in ("tune", "train", "evaluate")]
    expected += [f"synthesize@{name}" for name in SYNTHETIC]
    expected += ["plan", "report"]
    assert sorted(ran) == sorted(expected)
    assert {summary(repro_project, e)["task"] for e in EXPERIMENTS} == set(TASK_METRICS)
    for exp in EXPERIMENTS:
        task = summary(repro_project, exp)["task"]
        # DVC's metric file holds the headline (one `dvc exp show` column each), details.json
        # every test metric
        main = KINDS[task].main_metric
        keys = (main, f"{main}_ci95_low", f"{main}_ci95_high", KINDS[task].baseline_ratio)
        headline = json.loads((repro_project / paths.metrics_file(exp)).read_text())
        metrics = read_test_metrics(repro_project, exp)
        assert headline == {k: metrics[k] for k in keys if k in metrics}, exp
        assert {main, KINDS[task].baseline_ratio} <= set(headline), exp
        assert TASK_METRICS[task] <= set(metrics), exp
        assert all(isinstance(v, (int, float)) for v in metrics.values())
        figures = {p.stem for p in (repro_project / paths.plots_dir(exp)).glob("*.png")}
        expected = ONLY_FIGURES.get(exp, FIGURES[task] | EXTRA_FIGURES.get(exp, set()))
        assert figures == expected, exp
        # DVC plots only what there is: a confusion matrix of a classifier, a preview of
        # image inputs; no placeholder figure or empty table otherwise
        has_confusion = (repro_project / paths.confusion_csv(exp)).is_file()
        assert has_confusion == (task == "classification"), exp
        if task == "classification":
            confusion = (repro_project / paths.confusion_csv(exp)).read_text().splitlines()
            tested = summary(repro_project, exp)["data"]["counts"]["test"]
            assert confusion[0] == "actual,predicted" and len(confusion) == 1 + tested
        history = (repro_project / paths.history_file(exp)).read_text().splitlines()
        assert history[0].startswith("epoch,train/loss,") and len(history) == 3
        curves = (repro_project / paths.curves_file(exp)).read_text().splitlines()
        assert curves[0] == "epoch,panel,series,value" and "1,loss,train," in curves[1]
        train_plots = {p.name for p in (repro_project / paths.train_plots_dir(exp)).iterdir()}
        preview = {"augmentations.png"} if exp in IMAGE_INPUTS else set()
        assert train_plots == {"curves.csv"} | preview, exp
        saved = yaml.safe_load((repro_project / paths.resolved_config_file(exp)).read_text())
        assert saved["train"]["epochs"] == 2
    mlp = json.loads((repro_project / paths.details_file("mlp_digits")).read_text())
    assert sorted(mlp["per_class"]) == [str(d) for d in range(10)]
    gru = json.loads((repro_project / paths.details_file("gru_sunspots")).read_text())
    assert set(gru["baselines"]) == {"persistence", "ar"}
    report = (repro_project / paths.REPORT_HTML).read_text()
    assert all(exp in report for exp in EXPERIMENTS)
    tuning_pngs = sum(
        len(list((repro_project / paths.tuning_plots_dir(e)).glob("*.png"))) for e in TUNED
    )
    # and, for an experiment on a synthetic dataset, the generated images it learnt from
    on_synthetic = [e for e in EXPERIMENTS if summary(repro_project, e)["dataset"] in SYNTHETIC]
    assert report.count("data:image/png;base64,") == tuning_pngs + len(on_synthetic) + sum(
        len(summary(repro_project, e)["figures"]) for e in EXPERIMENTS
    )


def test_tuned_params_reach_train_and_the_report(repro_project):
    assert TUNED == ("cnn_digits",)
    for exp in EXPERIMENTS:
        tuned = yaml.safe_load((repro_project / paths.tuned_file(exp)).read_text())
        if exp not in TUNED:
            assert tuned == {}
            continue
        lr = tuned["train"]["optimizer"]["lr"]
        saved = yaml.safe_load((repro_project / paths.resolved_config_file(exp)).read_text())
        assert saved["train"]["optimizer"]["lr"] == lr  # defaults < experiment < tuned
        tuning = json.loads((repro_project / paths.tuning_summary(exp)).read_text())
        assert sum(tuning["states"].values()) == 2
        figures = sorted((repro_project / paths.tuning_plots_dir(exp)).iterdir())
        assert {"history.png", "importances.png", "parallel.png"} <= {f.name for f in figures}
        # the markdown report links each figure where it is
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (repro_project / paths.REPORT_MD).read_text())
        assert {repro_project / paths.REPORTS / link for link in links} >= set(figures)
        _, runs = mlflow_runs(repro_project)
        [train] = [r for r in runs if r.info.run_name == f"{exp}/train"]
        assert train.data.tags["pipeline.tuned"] == "true"
        assert float(train.data.params["train.optimizer.lr"]) == pytest.approx(lr)
    report = (repro_project / paths.REPORT_MD).read_text()
    assert "Tuning" in report and "cnn_digits" in report
    # the leaderboard shows each classifier's accuracy with its bootstrap interval
    mlp = summary(repro_project, "mlp_digits")["metrics"]
    interval = f"[{mlp['test/accuracy_ci95_low']:.4f}, {mlp['test/accuracy_ci95_high']:.4f}]"
    assert interval in report
    assert f"{mlp['test/accuracy_ratio_baseline']:.3f}x logistic regression" in report
    assert "test/accuracy (higher is better)" in report
    # counts print as integers; every experiment has a section the contents link to
    assert f"| test/samples | {int(mlp['test/samples']):,} |" in report
    assert all(f"[{e}](#{e})" in report and f"## {e}\n" in report for e in EXPERIMENTS)
    html = (repro_project / paths.REPORT_HTML).read_text()
    assert all(f'<a href="#{e}">' in html and f'<section id="{e}">' in html for e in EXPERIMENTS)


def test_mlflow_holds_the_same_figures_as_the_reports(repro_project, tmp_path):
    """Every figure in MLflow is the PNG file the report uses, byte for byte, under its name."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repro_project / 'mlflow.db'}")
    _, runs = mlflow_runs(repro_project)

    def logged(run_name: str, folder: str | None) -> dict[str, bytes]:
        [run] = [r for r in runs if r.info.run_name == run_name]
        (into := tmp_path / run.info.run_id).mkdir()
        dest = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path=folder or "augmentations.png", dst_path=into
        )
        files = Path(dest).glob("*.png") if folder else [Path(dest)]
        return {p.name: p.read_bytes() for p in files}

    def written(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in folder.glob("*.png")}

    for exp in EXPERIMENTS:
        assert logged(f"{exp}/evaluate", "plots") == written(repro_project / paths.plots_dir(exp))
    for exp in IMAGE_INPUTS:
        preview = repro_project / paths.augment_preview(exp)
        assert logged(f"{exp}/train", None) == {preview.name: preview.read_bytes()}
    for exp in TUNED:
        tuning = written(repro_project / paths.tuning_plots_dir(exp))
        assert tuning and logged(f"{exp}/tune", "tuning") == tuning


def test_dvc_metrics_and_plots_render(repro_project):
    shown = run(["dvc", "metrics", "show", "--json"], repro_project).stdout
    assert "test/accuracy" in shown
    out = repro_project / "plots_html"
    run(["dvc", "plots", "show", "-o", str(out)], repro_project)
    assert (out / "index.html").is_file()


def test_every_stage_is_an_mlflow_run_grouped_by_experiment(repro_project):
    client, runs = mlflow_runs(repro_project)
    by_name = {r.info.run_name: r for r in runs}
    expected = {f"{d}/{s}" for d in DATASETS for s in ("ingest", "preprocess")}
    expected |= {f"{e}/{s}" for e in EXPERIMENTS for s in ("train", "evaluate")} | {"report"}
    expected |= {"digits/judge"}  # only digits has generative experiments; the others no run
    assert not {f"{d}/judge" for d in DATASETS} - {"digits/judge"} & set(by_name)
    expected |= {f"{e}/tune" for e in TUNED}
    expected |= {f"{name}/synthesize" for name in SYNTHETIC}
    assert expected <= set(by_name)
    assert all(r.info.status == "FINISHED" for r in runs)
    lock = yaml.safe_load((repro_project / "dvc.lock").read_text())
    for exp in EXPERIMENTS:
        dataset = shipped_params()["experiments"][exp]["dataset"]
        made_by = f"{'synthesize' if dataset in SYNTHETIC else 'preprocess'}@{dataset}"
        [data_hash] = [
            out["md5"]
            for out in lock["stages"][made_by]["outs"]
            if out["path"] == str(paths.processed_dir(dataset))
        ]
        train, evaluate = by_name[f"{exp}/train"], by_name[f"{exp}/evaluate"]
        assert evaluate.data.tags["mlflow.parentRunId"] == train.info.run_id
        assert train.data.tags["pipeline.dvc.data_hash"] == data_hash
        assert train.data.tags["pipeline.dataset"] == dataset
        assert len(train.data.tags["mlflow.source.git.commit"]) == 40
        assert train.data.params["train.epochs"] == "2"
        # one point per epoch, logged as a batch per epoch
        assert [m.step for m in client.get_metric_history(train.info.run_id, "val/loss")] == [1, 2]
        # lineage: the data each run used, with its content hash
        schema = json.loads((repro_project / paths.schema_file(dataset)).read_text())
        inputs = {d.dataset.name: d for d in train.inputs.dataset_inputs}
        assert set(inputs) == {f"{dataset}/train", f"{dataset}/val"}
        assert inputs[f"{dataset}/train"].dataset.digest == schema["content_hash"][:16]
        tags = {t.key: t.value for t in inputs[f"{dataset}/train"].tags}
        assert tags["dvc_hash"] == data_hash and tags["mlflow.data.context"] == "training"
        assert [d.dataset.name for d in evaluate.inputs.dataset_inputs] == [f"{dataset}/test"]
        on_disk = read_test_metrics(repro_project, exp)
        assert evaluate.data.metrics == pytest.approx(on_disk)  # the same dict in both places
        # the train run (params, model) carries the test metrics too: one table sorts models
        tested = {k: v for k, v in on_disk.items() if k.startswith("test/")}
        assert {k: train.data.metrics[k] for k in tested} == pytest.approx(tested)
        # and the logged model lists them; the registered version is tagged with the headline
        registered = summary(repro_project, exp)["train"].get("registered_model")
        if registered:
            logged = client.get_logged_model(registered["model_id"]).metrics
            # (the run's system metrics may be linked too; one make test run listed 30 of 38)
            linked = {m.key: m.value for m in logged if m.key in tested}
            assert linked and linked == pytest.approx({k: tested[k] for k in linked})
            main = KINDS[summary(repro_project, exp)["task"]].main_metric
            version = client.get_model_version(registered["name"], registered["version"])
            assert version.tags[main].startswith(f"{tested[main]:.4f}")
        # a description on each run's page: what it did and the key result
        assert f"trained on {dataset}" in train.data.tags["mlflow.note.content"]
        main = KINDS[summary(repro_project, exp)["task"]].main_metric
        assert main in evaluate.data.tags["mlflow.note.content"]
    # every run of the first `dvc repro` carries one id, so "Group by" shows it as one
    groups = {by_name[n].data.tags.get("pipeline.invocation") for n in expected}
    assert len(groups) == 1 and groups.pop().startswith("dvc repro "), groups


def test_logged_model_loads_and_predicts(repro_project):
    import mlflow
    import numpy as np

    client, runs = mlflow_runs(repro_project)
    train = next(r for r in runs if r.info.run_name == f"{EXPERIMENTS[0]}/train")
    mlflow.set_tracking_uri(f"sqlite:///{repro_project / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{train.info.run_id}/model")
    assert model.metadata.signature is not None
    out = model.predict(np.full((3, 1, 8, 8), 16, dtype=np.float32))  # raw pixels, 0..16
    assert list(out.columns) == ["label", "confidence", *[f"p_{d}" for d in range(10)]]
    assert len(out) == 3 and set(out["label"]) <= {str(d) for d in range(10)}


def test_second_repro_is_a_noop(repro_project):
    proc = run(["dvc", "repro"], repro_project)
    assert stages_run(proc.stdout) == []
    assert "Data and pipelines are up to date" in proc.stdout
    check = run(["python", "-m", "pipeline", "check"], repro_project).stdout
    n_stages = 3 * len(DATASETS) + len(SYNTHETIC) + 3 * len(EXPERIMENTS) + 2  # plan, report
    assert f"would run 0 of {n_stages} stages" in check and "[will run]" not in check


def test_results_record_the_report_and_write_the_readme_table(repro_project, monkeypatch):
    """`python -m pipeline results --record` after a `dvc repro` keeps the report's
    leaderboard in reports/results.json and renders the README's table from it; `--check`
    passes, and names an experiment edited since; with a stage stale it records nothing."""
    from pipeline import results

    shutil.copy2(ROOT / "README.md", repro_project / "README.md")
    run(["python", "-m", "pipeline", "results", "--record"], repro_project)
    recorded = json.loads((repro_project / results.RESULTS).read_text())
    report = (repro_project / paths.REPORT_MD).read_text()
    readme = (repro_project / "README.md").read_text()
    lines = ["| " + " | ".join(row) + " |" for row in recorded["rows"]]
    assert len(lines) == len(EXPERIMENTS)
    assert all(line in report and line in readme for line in lines)
    assert set(recorded["tuning"]) == set(TUNED)
    assert recorded["machine"]["cores"] >= 1 and recorded["machine"]["cpu_kernels"]
    run(["python", "-m", "pipeline", "results", "--check"], repro_project)

    params = repro_project / "params.yaml"
    shipped = params.read_text()
    raw = yaml.safe_load(shipped)
    raw["experiments"][EXPERIMENTS[0]].setdefault("train", {})["epochs"] = 3
    try:
        write_params(params, raw)
        monkeypatch.chdir(repro_project)
        found = results.problems()
        changed = f"changed since the run behind the README's results: {EXPERIMENTS[0]};"
        assert len(found) == 1 and changed in found[0], found
        failed = run(
            ["python", "-m", "pipeline", "results", "--record"], repro_project, check=False
        )
        assert failed.returncode == 2 and "run `dvc repro` first" in failed.stderr
        assert json.loads((repro_project / results.RESULTS).read_text()) == recorded
    finally:
        params.write_text(shipped)


def test_a_second_full_run_writes_the_same_bytes(repro_project, tmp_path):
    """DVC compares outputs by md5: a fresh clone that runs the same pipeline must write the
    same models, checkpoints, metrics, plots and their data, schemas and judges, file by file.
    Only the files that record wall times and MLflow run ids differ. The clone runs with
    tracking off: tracking is no DVC param of any stage, so it must not change an output
    either (and the run skips MLflow's cost: 128 s instead of 156 s for four shrunk
    experiments on 2 cores)."""
    from pipeline.verify import VARYING

    first = json.loads((repro_project / "first_repro.md5.json").read_text())
    raw = shrink(shipped_params())
    raw["defaults"]["tracking"]["enabled"] = False
    again = make_project(tmp_path / "again", raw)
    run(["dvc", "repro"], again)
    assert not (again / "mlflow.db").exists()
    second = output_md5s(again)
    assert first.keys() == second.keys()
    differ = {path for path in first if first[path] != second[path]}
    assert {path for path in differ if Path(path).name not in VARYING} == set()
    assert len(first) - len(differ) > 150  # models, checkpoints, metrics, figures, ...


def test_bad_params_fail_fast_and_touch_nothing(repro_project):
    raw = yaml.safe_load((repro_project / "params.yaml").read_text())
    raw["defaults"]["train"]["epohcs"] = 1
    bad = write_params(repro_project / "bad.yaml", raw)
    model = repro_project / paths.model_file(EXPERIMENTS[0])
    before = model.stat().st_mtime_ns
    proc = run(
        ["python", "-m", "pipeline.stages.train", EXPERIMENTS[0], "--params", str(bad)],
        repro_project,
        check=False,
    )
    assert proc.returncode == 2
    assert "defaults.train.epohcs: unknown key; did you mean 'epochs'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert model.stat().st_mtime_ns == before
    proc = run(["python", "-m", "pipeline.stages.train", "nope"], repro_project, check=False)
    assert proc.returncode == 2 and "experiment 'nope' is not in params.yaml" in proc.stderr
    bad.unlink()


def test_check_predicts_what_a_param_edit_reruns(repro_project):
    exp = EXPERIMENTS[0]
    params_file = repro_project / "params.yaml"
    original = params_file.read_text()
    raw = yaml.safe_load(original)
    raw["experiments"][exp]["train"]["epochs"] = 3
    write_params(params_file, raw)
    try:
        check = run(["python", "-m", "pipeline", "check"], repro_project).stdout
    finally:
        params_file.write_text(original)
    # plan re-runs on any experiment edit; no judge does, the answers being the same, and
    # tune@ only for an experiment that tunes (its search depends on the edited epochs)
    expected = {"plan", f"train@{exp}", f"evaluate@{exp}", "report"}
    assert exp not in TUNED and will_run(check) == expected
    tuned = TUNED[0]
    raw = yaml.safe_load(original)
    raw["experiments"][tuned].setdefault("train", {})["epochs"] = 3
    write_params(params_file, raw)
    try:
        check = run(["python", "-m", "pipeline", "check"], repro_project).stdout
    finally:
        params_file.write_text(original)
    stages = {f"{s}@{tuned}" for s in ("tune", "train", "evaluate")}
    assert will_run(check) == {"plan", "report", *stages}


def test_check_predicts_what_a_code_edit_reruns(repro_project):
    """dvc.yaml's code deps follow the imports: an edit to the generative evaluation re-runs
    every evaluate@ (one stage module evaluates every kind) and the report, and nothing else."""
    module = repro_project / "pipeline" / "evaluation" / "generative.py"
    original = module.read_text()
    module.write_text(original + "\n# edited\n")
    try:
        check = run(["python", "-m", "pipeline", "check"], repro_project).stdout
    finally:
        module.write_text(original)
    assert will_run(check) == {f"evaluate@{exp}" for exp in EXPERIMENTS} | {"report"}


def test_exp_run_with_set_param_reruns_only_what_changed(repro_project):
    exp = EXPERIMENTS[0]
    proc = run(["dvc", "exp", "run", "-S", f"experiments.{exp}.train.epochs=3"], repro_project)
    # an experiment that does not tune: its search is not re-run (tune_plan's file is the same)
    expected = ["plan", f"train@{exp}", f"evaluate@{exp}", "report"]
    assert sorted(stages_run(proc.stdout)) == sorted(expected)
    summary = json.loads((repro_project / paths.train_summary_file(exp)).read_text())
    assert summary["epochs_run"] == 3
    shown = run(["dvc", "exp", "show", "--json"], repro_project).stdout
    assert f"experiments.{exp}.train.epochs" in shown or '"epochs": 3' in shown
    # metrics.json holds each experiment's headline only: a few columns per experiment in
    # `dvc exp show`, not one per test metric; the README's --only-changed keeps what moved
    header = run(["dvc", "exp", "show", "--csv"], repro_project).stdout.splitlines()[0]
    assert 0 < sum("test/" in column for column in header.split(",")) <= 4 * len(EXPERIMENTS)
    changed = run(["dvc", "exp", "show", "--only-changed", "--csv"], repro_project).stdout
    assert f"experiments.{exp}.train.epochs" in changed.splitlines()[0]
    # the short view: a line for the DVC experiment with its metric and the changed param
    compared = run(["python", "-m", "pipeline", "compare", exp], repro_project).stdout
    [line] = [x for x in compared.splitlines() if f"experiments.{exp}.train.epochs=3" in x]
    metrics = json.loads((repro_project / paths.metrics_file(exp)).read_text())
    task = json.loads((repro_project / paths.summary_file(exp)).read_text())["task"]
    main = KINDS[task].main_metric
    assert f" {exp} " in line and f"{main} " in line and f"{metrics[main]:.4f}" in line
    # metrics and plots compare across commits and experiments
    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], repro_project).stdout)
    assert "test/accuracy" in json.dumps(diff)
    out = repro_project / "plots_diff"
    run(["dvc", "plots", "diff", "-o", str(out)], repro_project)
    html = (out / "index.html").read_text()
    assert "curves.csv" in html and "confusion.csv" in html


def test_mlflow_ui_shows_every_stage_run(repro_project):
    """`make ui` serves this store: the UI's REST API lists the pipeline's runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    ui = subprocess.Popen(
        [
            str(mlflow_bin),
            "ui",
            "--backend-store-uri",
            "sqlite:///mlflow.db",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=repro_project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(
                    f"{base}/experiments/get-by-name?experiment_name=dl-pipeline", timeout=5
                ) as resp:
                    exp_id = json.load(resp)["experiment"]["experiment_id"]
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(0.5)
        body = json.dumps({"experiment_ids": [exp_id], "max_results": 1000}).encode()
        req = urllib.request.Request(
            f"{base}/runs/search", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            names = {r["info"]["run_name"] for r in json.load(resp)["runs"]}
        # the report links each experiment's runs to `make ui`'s pages of them: each link's
        # run is served, under the experiment the link names
        report = (repro_project / paths.REPORT_MD).read_text()
        links = re.findall(r"\(http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs/(\w+)\)", report)
        assert len(links) == 2 * len(EXPERIMENTS)
        for experiment_id, run_id in links:
            with urllib.request.urlopen(f"{base}/runs/get?run_id={run_id}", timeout=30) as resp:
                assert json.load(resp)["run"]["info"]["experiment_id"] == experiment_id
        # and to the runs table grouped by pipeline invocation, which a browser shows
        grouped = re.findall(r"\(http://127\.0\.0\.1:5000(/#/experiments/\d+/runs\?\S+)\)", report)
        assert len(grouped) == 1
        groups = grouped_runs_in_chromium(f"http://127.0.0.1:{port}{grouped[0]}")
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    assert {f"{e}/train" for e in EXPERIMENTS} <= names
    assert {f"{e}/evaluate" for e in EXPERIMENTS} | {"report", "digits/ingest"} <= names
    # one group per `dvc repro` / `dvc exp run` of this project, with the headline metrics
    assert groups["text"].count("Group: dvc repro") >= 1, groups["text"][:2000]
    assert "Group by: pipeline.invocation" in groups["text"]
    assert "test/accuracy" in groups["text"]
    assert groups["errors"] == []
    assert MLFLOW_SCREENSHOT.stat().st_size > 10_000


def grouped_runs_in_chromium(url: str) -> dict:
    """Open the MLflow UI's grouped runs view in headless chromium, keep a screenshot, and
    return the page's text and console errors (the UI's requests for optional services it
    finds missing, such as the assistant's, answer 404 and are not counted)."""
    with chromium_page(1800, 1000) as (page, errors):
        page.goto(url, wait_until="load")
        page.get_by_text("Group: dvc repro").first.wait_for(timeout=60_000)
        MLFLOW_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(MLFLOW_SCREENSHOT))
        text = page.inner_text("body")
    return {"text": text, "errors": [e for e in errors if "404" not in e]}


@contextlib.contextmanager
def chromium_page(width: int, height: int):
    """A page of Debian's headless chromium (driven by playwright) and the list its console
    errors and uncaught exceptions are added to."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium is missing: `make test` installs it"
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            browser.close()


def test_sigterm_mid_training_leaves_no_model_and_the_rerun_resumes(repro_project):
    """A killed train writes no model, ends its MLflow run KILLED, and resumes next time."""
    raw = shrink(shipped_params(), epochs=400)
    raw["experiments"] = {"long_mlp": raw["experiments"][EXPERIMENTS[0]]}
    raw.pop("synthetic")  # its generator is not among these experiments
    raw["experiments"]["long_mlp"]["train"].update(
        early_stopping={"patience": 0}, checkpoint_interval=0
    )
    params = write_params(repro_project / "long.yaml", raw)
    cmd = [sys.executable, "-m", "pipeline.stages.train", "long_mlp", "--params", str(params)]
    ckpt = repro_project / paths.checkpoint_file("long_mlp")
    proc = subprocess.Popen(cmd, cwd=repro_project, stderr=subprocess.PIPE, text=True)
    wait_for_file(ckpt, proc, timeout=120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not (repro_project / paths.model_file("long_mlp")).exists()
    client, runs = mlflow_runs(repro_project)
    assert [r.info.status for r in runs if r.info.run_name == "long_mlp/train"] == ["KILLED"]

    run([*cmd], repro_project)
    summary = json.loads((repro_project / paths.train_summary_file("long_mlp")).read_text())
    assert summary["resumed_from_epoch"] >= 1
    assert summary["epochs_run"] == 400
    assert (repro_project / paths.model_file("long_mlp")).is_file()


CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[1] / "reports" / "test_artifacts" / "report.png"
DVC_SCREENSHOT = SCREENSHOT.with_name("dvc_plots.png")
MLFLOW_SCREENSHOT = SCREENSHOT.with_name("mlflow_runs.png")


def test_report_renders_in_headless_chromium(repro_project):
    """reports/index.html loads in a real browser with no console errors and every image
    decodes; the screenshot is kept as a test artifact."""
    with chromium_page(1200, 900) as (page, errors):
        page.goto((repro_project / paths.REPORT_HTML).as_uri(), wait_until="load")
        decoded = page.evaluate(
            "Promise.all([...document.images].map(i => i.decode().then("
            "() => i.naturalWidth > 0, () => false)))"
        )
        rows = page.locator("table").first.locator("tbody tr").count()
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert errors == []
    assert len(decoded) >= len(EXPERIMENTS) and all(decoded)
    assert rows == len(EXPERIMENTS)  # one leaderboard row per experiment
    assert SCREENSHOT.stat().st_size > 10_000


def test_dvc_plots_page_draws_offline_in_headless_chromium(repro_project, tmp_path):
    """`dvc plots show` writes a page that draws every plot with no network: vega is inline
    (.dvc/config's html_template), each learning-curve and confusion plot has drawn marks, and
    no figure is a placeholder saying there is nothing to show."""
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repro_project)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in html  # and the browser below may load nothing over http
    classifiers = [e for e in EXPERIMENTS if summary(repro_project, e)["task"] == "classification"]
    plots = html.count("vegaEmbed('#")
    assert plots == len(EXPERIMENTS) + len(classifiers)  # curves, and confusion of classifiers
    with chromium_page(1400, 900) as (page, errors):
        page.route(
            "**/*", lambda r: r.abort() if r.request.url.startswith("http") else r.continue_()
        )
        page.goto((tmp_path / "plots" / "index.html").as_uri(), wait_until="load")
        page.wait_for_function(
            f"document.querySelectorAll('.vega-embed svg').length >= {plots}", timeout=60_000
        )
        marks = page.evaluate(
            "[...document.querySelectorAll('.vega-embed')].map(e => e.querySelectorAll("
            "'g.mark-line path, g.mark-rect path, g.mark-symbol path').length)"
        )
        decoded = page.evaluate(
            "Promise.all([...document.images].map(i => i.decode().then("
            "() => i.naturalWidth > 0, () => false)))"
        )
        DVC_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DVC_SCREENSHOT), full_page=True)
    assert errors == []
    assert len(marks) == plots and all(n > 0 for n in marks), marks
    assert decoded and all(decoded)  # the PNG plots (figures, previews) decode


def test_a_judge_is_trained_only_for_datasets_a_generative_experiment_uses(tmp_path):
    import copy

    params = copy.deepcopy(TINY)
    project = make_project(tmp_path / "p", params)
    proc = run(["dvc", "repro", "judge@digits"], project)
    assert "judge@digits: not trained: no generative experiment (vae, gan, diffusion) uses it" in (
        proc.stdout
    )
    assert not (project / paths.judge_dir("digits") / "model.pt").exists()

    # a VAE on digits needs the judge: the plan's answer changes, so DVC re-runs judge@digits
    params["experiments"]["vae"] = {"dataset": "digits", "model": {"name": "vae", "latent_dim": 2}}
    write_params(project / "params.yaml", params)
    check = run(["python", "-m", "pipeline", "check"], project).stdout
    assert {"plan", "judge@digits"} <= will_run(check)
    proc = run(["dvc", "repro", "judge@digits"], project)
    assert stages_run(proc.stdout) == ["plan", "judge@digits"]
    assert (project / paths.judge_dir("digits") / "model.pt").is_file()

    # another experiment on digits changes no answer: the judge is not trained again
    params["experiments"]["mlp2"] = {"dataset": "digits"}
    write_params(project / "params.yaml", params)
    check = run(["python", "-m", "pipeline", "check"], project).stdout
    assert "plan" in will_run(check) and "judge@digits" not in will_run(check)
    proc = run(["dvc", "repro", "judge@digits"], project)
    assert stages_run(proc.stdout) == ["plan"]
