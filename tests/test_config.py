"""params.yaml schema: the shipped file loads; mistakes get one clear message naming the key."""

import json
import subprocess
import sys

import pytest

from pipeline import paths
from pipeline.__main__ import plan, stages_to_run
from pipeline.config import load_params, merge_overrides
from pipeline.errors import ParamsError
from pipeline.params.models import MODEL_PARAMS
from tests.conftest import (
    ROOT,
    TINY,
    make_project,
    run,
    shipped_params,
    will_run,
    write_params,
)


def problems_for(tmp_path, mutate) -> list[str]:
    raw = shipped_params()
    mutate(raw)
    with pytest.raises(ParamsError) as info:
        load_params(write_params(tmp_path / "params.yaml", raw))
    return info.value.problems


def test_shipped_params_load_with_precedence():
    params = load_params(ROOT / "params.yaml")
    raw = shipped_params()
    assert set(params.experiments) == set(raw["experiments"])
    cnn = params.experiments["cnn_digits"]
    assert isinstance(cnn.model, MODEL_PARAMS["cnn"])
    # experiment overrides win, everything else comes from defaults
    assert cnn.train.epochs == raw["experiments"]["cnn_digits"]["train"]["epochs"]
    assert cnn.train.batch_size == raw["defaults"]["train"]["batch_size"]
    assert cnn.train.optimizer.lr == raw["defaults"]["train"]["optimizer"]["lr"]


def test_typo_key_suggests_the_close_match(tmp_path):
    problems = problems_for(tmp_path, lambda r: r["defaults"]["train"].update(epohcs=3))
    assert problems == ["defaults.train.epohcs: unknown key; did you mean 'epochs'?"]


def test_typo_in_experiment_model_names_the_experiment(tmp_path):
    problems = problems_for(
        tmp_path, lambda r: r["experiments"]["cnn_digits"]["model"].update(chanels=[8])
    )
    assert problems == [
        "experiments.cnn_digits.model.chanels: unknown key; did you mean 'channels'?"
    ]


def test_wrong_type_names_key_and_value(tmp_path):
    problems = problems_for(tmp_path, lambda r: r["defaults"]["train"].update(epochs="ten"))
    assert len(problems) == 1
    assert problems[0].startswith("defaults.train.epochs: 'ten' is invalid")
    assert "integer" in problems[0]


def test_unknown_model_lists_known_models(tmp_path):
    problems = problems_for(
        tmp_path, lambda r: r["experiments"]["mlp_digits"]["model"].update(name="resnet")
    )
    assert problems == [
        "experiments.mlp_digits.model.name: 'resnet' is not a known model; "
        "known models: cnn, diffusion, gan, mlp, pretrained, rnn, seq2seq, transformer, vae"
    ]


def test_unknown_dataset_and_bad_choice(tmp_path):
    def mutate(raw):
        raw["experiments"]["mlp_digits"]["dataset"] = "mnist"
        raw["defaults"]["train"]["optimizer"]["name"] = "lbfgs"

    problems = problems_for(tmp_path, mutate)
    assert (
        "experiments.mlp_digits.dataset: 'mnist' is not a declared dataset; "
        "declared: cancer, dates, digits, digits_tenth, digits_tenth_gan, docs, names, sunspots"
        in problems
    )
    assert (
        "defaults.train.optimizer.name: 'lbfgs' is not allowed; "
        "expected 'sgd', 'adam', 'adamw' or 'rmsprop'" in problems
    )
    assert len(problems) == 2  # a bad default is reported once, not once per experiment


def test_unknown_section_and_bad_split(tmp_path):
    def mutate(raw):
        raw["experimets"] = {}
        raw["datasets"]["digits"]["split"] = {"val": 0.5, "test": 0.45}

    problems = problems_for(tmp_path, mutate)
    assert "experimets: unknown key; did you mean 'experiments'?" in problems
    assert any(p.startswith("datasets.digits.split: val + test = 0.95") for p in problems)


def test_model_must_fit_the_dataset_task(tmp_path):
    problems = problems_for(
        tmp_path, lambda r: r["experiments"]["gru_sunspots"].update(model={"name": "cnn"})
    )
    assert problems == [
        "experiments.gru_sunspots.model.name: 'cnn' cannot learn dataset 'sunspots' "
        "(forecasting); models for forecasting: mlp, rnn, transformer"
    ]


def test_unknown_dataset_source_lists_known_sources(tmp_path):
    from pipeline.params.datasets import DATASET_TASK

    problems = problems_for(tmp_path, lambda r: r["datasets"]["sunspots"].update(source="csv"))
    known = ", ".join(sorted(DATASET_TASK))
    assert problems[0] == (
        f"datasets.sunspots.source: 'csv' is not a known source; known sources: {known}"
    )


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "missing.yaml")


def test_model_override_of_another_family_replaces_the_section():
    base = {"model": {"name": "mlp", "hidden_sizes": [4]}, "train": {"epochs": 3, "lr": 1}}
    merged = merge_overrides(base, {"model": {"name": "cnn"}, "train": {"epochs": 5}})
    assert merged == {"model": {"name": "cnn"}, "train": {"epochs": 5, "lr": 1}}
    same = merge_overrides(base, {"model": {"name": "mlp", "dropout": 0.3}})
    assert same["model"] == {"name": "mlp", "hidden_sizes": [4], "dropout": 0.3}


def test_params_are_frozen():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(Exception, match="frozen"):
        params.experiments["mlp_digits"].model.dropout = 0.9
    assert isinstance(params.defaults.model, MODEL_PARAMS["mlp"])


def run_check(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_prints_the_plan():
    proc = run_check(ROOT, "--no-status")
    assert proc.returncode == 0, proc.stderr
    for stage in ("ingest@digits", "tune@cnn_digits", "train@gru_sunspots", "evaluate@vae_digits"):
        assert stage in proc.stdout
    assert "report" in proc.stdout


def test_stages_downstream_of_a_change_will_run():
    params = load_params(ROOT / "params.yaml")
    assert stages_to_run(params, {"train@cnn_digits"}) == {
        "train@cnn_digits",
        "evaluate@cnn_digits",
        "report",
    }
    # a new judge re-scores every experiment on its dataset
    assert {f"evaluate@{e}" for e in ("gan_digits", "vae_digits", "mlp_digits")} <= stages_to_run(
        params, {"judge@digits"}
    )
    on_digits = {f"{s}@digits" for s in ("ingest", "preprocess", "judge")} | {"report"}
    on_digits |= {
        f"{s}@{name}"
        for name, exp in params.experiments.items()
        if exp.dataset == "digits"
        for s in ("tune", "train", "evaluate")
    }
    # and the synthetic dataset made by gan_digits, with the experiments that learn from it
    made = {"synthesize@digits_tenth_gan"} | {
        f"{s}@cnn_digits_tenth_gan" for s in ("tune", "train", "evaluate")
    }
    assert stages_to_run(params, {"ingest@digits"}) == on_digits | made
    assert stages_to_run(params, {"train@gan_digits"}) == made | {
        "train@gan_digits",
        "evaluate@gan_digits",
        "report",
    }
    # a new search retrains and re-reports its experiment only
    assert stages_to_run(params, {"tune@cnn_digits"}) == {
        "tune@cnn_digits",
        "train@cnn_digits",
        "evaluate@cnn_digits",
        "report",
    }
    assert on_digits < {stage for stage, _ in plan(params)}
    assert stages_to_run(params, set()) == set()


def test_the_plan_re_runs_a_search_only_for_an_experiment_that_tunes(tmp_path, monkeypatch):
    """An edit of any experiment re-runs the plan stage; its tune plan files change (and so
    tune@ runs) only for an experiment whose search depends on what was edited."""
    from pipeline.stages import plan as plan_stage

    monkeypatch.chdir(tmp_path)
    raw = shipped_params()
    assert raw["experiments"]["cnn_digits"]["tune"]["enabled"]
    assert not raw["experiments"]["mlp_digits"].get("tune", {}).get("enabled")
    plan_stage.run(load_params(write_params(tmp_path / "params.yaml", raw)))
    same = load_params(tmp_path / "params.yaml")
    assert not {s for s in stages_to_run(same, {"plan"}) if s.startswith(("tune@", "judge@"))}
    for name in ("mlp_digits", "cnn_digits"):
        raw["experiments"][name].setdefault("train", {})["epochs"] = 3
    raw["experiments"]["gru_sunspots"].setdefault("tune", {})["enabled"] = True
    edited = load_params(write_params(tmp_path / "params.yaml", raw))
    will = stages_to_run(edited, {"plan", "train@mlp_digits", "train@cnn_digits"})
    assert {s for s in will if s.startswith("tune@")} == {"tune@cnn_digits", "tune@gru_sunspots"}
    written = json.loads(paths.tune_plan_file("mlp_digits").read_text())
    assert written == {"tune": False}
    assert json.loads(paths.tune_plan_file("cnn_digits").read_text())["train"]["epochs"] != 3


def test_check_rejects_bad_params_with_one_message_and_writes_nothing(tmp_path):
    raw = shipped_params()
    raw["defaults"]["train"]["epohcs"] = 3
    path = write_params(tmp_path / "params.yaml", raw)
    before = sorted(tmp_path.iterdir())
    proc = run_check(ROOT, "--params", str(path))
    assert proc.returncode == 2
    assert "defaults.train.epohcs: unknown key; did you mean 'epochs'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(tmp_path.iterdir()) == before


def test_check_imports_no_heavy_library():
    # dvc is asked in-process for the status (cheaper than a `dvc status` subprocess)
    code = (
        "import sys, pipeline.__main__ as m; m.main(['check']);"
        "heavy = [x for x in ('torch', 'mlflow', 'optuna', 'prefect') if x in sys.modules];"
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_check_marks_what_dvc_status_reports_out_of_date(tmp_path):
    project = make_project(tmp_path / "p", TINY)
    stale = set(json.loads(run(["dvc", "status", "--json"], project).stdout))
    assert "ingest@digits" in stale
    proc = run([sys.executable, "-m", "pipeline", "check"], project)
    params = load_params(project / "params.yaml")
    assert will_run(proc.stdout) == stages_to_run(params, stale)
    assert f"would run 8 of {len(plan(params))} stages" in proc.stdout

    # outside a DVC repository the plan is printed without marks
    outside = tmp_path / "plain"
    outside.mkdir()
    write_params(outside / "params.yaml", TINY)
    proc = run([sys.executable, "-m", "pipeline", "check"], outside)
    assert "[will run]" not in proc.stdout and "[up to date]" not in proc.stdout
    assert "would run" not in proc.stdout


@pytest.mark.parametrize("key", ["tune", "device", "evaluate"])
def test_a_key_dvc_yaml_tracks_is_required_by_check_and_by_every_stage(tmp_path, capsys, key):
    """The schema has defaults for these, but DVC reads params.yaml itself and refuses a stage
    whose tracked params are missing, after running the stages before it: check says so first,
    and so does every stage, before any work."""
    import shutil

    from pipeline.stages import ingest

    raw = shipped_params()
    del raw["defaults"][key]
    shutil.copy2(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    path = write_params(tmp_path / "params.yaml", raw)
    proc = run_check(ROOT, "--params", str(path), "--no-status")
    assert proc.returncode == 2
    assert f"defaults.{key}: missing; dvc.yaml's stage " in proc.stderr
    assert f"(for a section, `{key}: {{}}` keeps every default)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert ingest.main(["digits", "--params", str(path)]) == 2
    assert f"defaults.{key}: missing" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]
    # an empty section keeps the defaults and is what DVC needs
    raw["defaults"][key] = {} if key != "device" else "auto"
    write_params(path, raw)
    assert run_check(ROOT, "--params", str(path), "--no-status").returncode == 0


def test_check_refuses_a_metric_the_task_does_not_report(tmp_path):
    """Train and tune would refuse these only when they start (train: after tuning ran)."""

    def mutate(raw):
        raw["defaults"]["train"]["early_stopping"]["metric"] = "val/los"
        raw["experiments"]["cnn_digits"]["tune"]["metric"] = "val/rmse"
        raw["experiments"]["vae_digits"]["train"] = {"early_stopping": {"metric": "val/recon"}}
        raw["experiments"]["gan_digits"]["train"] = {"early_stopping": {"metric": "val/kl"}}

    found = problems_for(tmp_path, mutate)
    assert (
        "defaults.train.early_stopping.metric: 'val/los' is not reported when mlp learns "
        "dataset 'digits'; choose from val/loss, val/accuracy"
    ) in found
    assert any(p.startswith("experiments.cnn_digits.tune.metric: 'val/rmse'") for p in found)
    assert any(
        p.startswith("experiments.gan_digits.train.early_stopping.metric: 'val/kl' ")
        and p.endswith("choose from val/loss, val/d_loss, val/diversity")
        for p in found
    )
    # the VAE's own metric is fine for it
    assert not any(p.startswith("experiments.vae_digits.") for p in found)
    proc = run_check(ROOT, "--params", str(tmp_path / "params.yaml"), "--no-status")
    assert proc.returncode == 2 and "'val/los' is not reported" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_no_experiments_is_refused(tmp_path):
    found = problems_for(tmp_path, lambda raw: raw.update(experiments={}))
    assert "experiments: empty; declare at least one (a dataset and a model)" in found
