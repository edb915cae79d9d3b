"""Tuning: the declared search space, real Optuna studies on digits, workers, kills, resume."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
import yaml

from pipeline import paths
from pipeline.config import apply_overrides, load_params
from pipeline.errors import ParamsError, PipelineError
from pipeline.params.tuning import TuneParams
from pipeline.tuning import launch, results, search, studies
from tests.conftest import ROOT, write_params

EXP = "mlp"
BASE = {
    "datasets": {"digits": {"source": "sklearn_digits"}},
    "defaults": {
        "device": "cpu",
        "train": {
            "epochs": 4,
            "batch_size": 64,
            "early_stopping": {"metric": "val/accuracy", "patience": 0},
        },
        "tracking": {"uri": "sqlite:///mlflow.db", "log_model": False},
    },
    "experiments": {
        EXP: {
            "dataset": "digits",
            "model": {"name": "mlp", "hidden_sizes": [32]},
            "tune": {
                "enabled": True,
                "n_trials": 4,
                "metric": "val/accuracy",
                "heartbeat_seconds": 1,
                "space": {
                    "train.optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}
                },
            },
        }
    },
}


def params_with(**tune) -> dict:
    raw = copy.deepcopy(BASE)
    raw["experiments"][EXP]["tune"].update(tune)
    return raw


def problems_for(tmp_path, **tune) -> list[str]:
    with pytest.raises(ParamsError) as info:
        load_params(write_params(tmp_path / "params.yaml", params_with(**tune)))
    return info.value.problems


# ---- the declared search: validated before any trial runs --------------------------------


def test_unknown_space_path_is_named_with_a_suggestion(tmp_path):
    space = {"model.dropot": {"type": "float", "low": 0.0, "high": 0.5}}
    [problem] = problems_for(tmp_path, space=space)
    assert problem.startswith(f"experiments.{EXP}.tune.space.model.dropot:")
    assert "did you mean 'dropout'" in problem


def test_empty_range_and_out_of_bounds_values_are_errors(tmp_path):
    empty = problems_for(
        tmp_path, space={"model.dropout": {"type": "float", "low": 0.5, "high": 0.1}}
    )
    assert len(empty) == 1 and "empty range" in empty[0] and "model.dropout" in empty[0]
    # dropout must stay below 1: the high end of the range is checked against the schema
    bounds = problems_for(tmp_path, space={"model.dropout": {"type": "float", "low": 0, "high": 1}})
    assert len(bounds) == 1
    assert bounds[0].startswith(f"experiments.{EXP}.tune.space.model.dropout: with 1")
    choices = problems_for(
        tmp_path, space={"model.dropout": {"type": "categorical", "choices": []}}
    )
    assert len(choices) == 1 and "choices" in choices[0]


def test_only_model_train_and_seed_are_tunable(tmp_path):
    [problem] = problems_for(tmp_path, space={"dataset": {"type": "categorical", "choices": ["x"]}})
    assert "only model.*, train.* and seed can be tuned" in problem


def test_objective_rules(tmp_path):
    multi = problems_for(tmp_path, metric=["val/accuracy", "parameters"])
    assert any("pruning needs a single objective; set pruner: none" in p for p in multi)
    [bad] = problems_for(tmp_path, metric="accuracy")
    assert "use a val/... metric" in bad
    [grid] = problems_for(tmp_path, sampler="grid")
    assert "needs a step" in grid
    tune = TuneParams(metric=["val/accuracy", "parameters"], pruner="none")
    assert tune.directions() == ("maximize", "minimize")


def test_a_conditional_entry_may_name_params_of_another_model_family(tmp_path):
    raw = params_with(
        space={
            "model.name": {"type": "categorical", "choices": ["mlp", "cnn"]},
            "model.channels": {
                "type": "categorical",
                "choices": [[8], [8, 16]],
                "when": {"model.name": "cnn"},
            },
        }
    )
    params = load_params(write_params(tmp_path / "params.yaml", raw))
    tune = params.experiments[EXP].tune
    base = params.experiments[EXP].model_dump(mode="json")
    as_mlp = search.sample(optuna.trial.FixedTrial({"model.name": "mlp"}), tune, base)
    assert as_mlp == {"model.name": "mlp"}  # channels only when the model is a cnn
    fixed = {"model.name": "cnn", "model.channels": "[8, 16]"}  # lists travel as JSON
    as_cnn = search.sample(optuna.trial.FixedTrial(fixed), tune, base)
    assert as_cnn == {"model.name": "cnn", "model.channels": [8, 16]}


def test_tuned_overrides_win_over_experiment_and_defaults(tmp_path):
    params = load_params(write_params(tmp_path / "params.yaml", params_with()))
    exp = params.experiments[EXP]
    tuned = apply_overrides(exp, {"train": {"optimizer": {"lr": 0.02}}}, "tuned.yaml")
    assert tuned.train.optimizer.lr == 0.02
    assert tuned.train.epochs == 4  # defaults kept
    assert tuned.model.hidden_sizes == (32,)  # experiment kept
    with pytest.raises(PipelineError, match=r"tuned.yaml\.model\.dropout"):
        apply_overrides(exp, {"model": {"dropout": 2}}, "tuned.yaml")


# ---- workers, GPUs, counting, the Pareto choice ----------------------------------------------


def test_each_worker_gets_its_own_gpu_or_its_share_of_cores(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    envs = launch.worker_envs(2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]
    assert [launch.worker_env(i, 3, 2, 8)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == [
        "0",
        "1",
        "0",
    ]
    cpu = launch.worker_env(1, 2, 0, 2)
    assert cpu["OMP_NUM_THREADS"] == "1" and cpu["CUDA_VISIBLE_DEVICES"] == ""


def _frozen(number, state, values=None, **system_attrs):
    trial = optuna.trial.create_trial(
        state=state, values=values, system_attrs=system_attrs, params={}, distributions={}
    )
    trial.number = number
    return trial


def test_a_lost_attempt_does_not_use_up_the_budget():
    S = optuna.trial.TrialState
    trials = [
        _frozen(0, S.COMPLETE, [1.0]),
        _frozen(1, S.FAIL),  # its worker died; trial 3 re-runs it
        _frozen(2, S.FAIL),  # NaN loss: counts
        _frozen(3, S.WAITING, failed_trial=1, retry_history=[1]),
    ]
    assert studies.lost_trials(trials) == {1}
    assert [t.number for t in studies.counted(trials)] == [0, 2, 3]
    assert [t.number for t in studies.finished(trials)] == [0, 2]


def test_a_worker_whose_trial_another_ended_as_stale_goes_on(capsys):
    """A late heartbeat on a busy machine: another worker fails this worker's running trial.
    Optuna then refuses to tell it ("Cannot tell a FAIL trial"); the worker goes on to the
    next trial instead of exiting with an error."""
    from pipeline.tuning.runner import optimize_one

    study = optuna.create_study()
    told = []

    def ended_elsewhere(trial):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        trial.set_user_attr("epochs", 3)  # what the objective writes next: refused
        return 1.0

    optimize_one(study, ended_elsewhere, lambda study, trial: told.append(trial.number))
    optimize_one(study, lambda trial: 2.0, lambda study, trial: told.append(trial.number))
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert told == [1]  # only the trial this worker finished
    assert "another worker failed this worker's trial as stale" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a bug"):  # any other error still stops the worker

        def broken(trial):
            raise ValueError("a bug")

        optimize_one(study, broken, lambda study, trial: None)


def test_pareto_choice_knee_and_first():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, size in [(0.99, 1000.0), (0.98, 100.0), (0.90, 10.0), (0.80, 500.0)]:
        study.add_trial(optuna.trial.create_trial(values=[acc, size]))
    first = TuneParams(metric=["val/accuracy", "parameters"], pruner="none", pareto_choice="first")
    knee = first.model_copy(update={"pareto_choice": "knee"})
    assert results.chosen_trial(study, first).values == [0.99, 1000.0]
    assert results.chosen_trial(study, knee).values == [0.98, 100.0]


# ---- real studies on digits ------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory) -> Path:
    """data/processed/digits, made once by the real ingest and preprocess stages."""
    root = tmp_path_factory.mktemp("digits")
    write_params(root / "params.yaml", BASE)
    for stage in ("ingest", "preprocess"):
        cmd = [sys.executable, "-m", f"pipeline.stages.{stage}", "digits"]
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root / "data"


@pytest.fixture
def project(tmp_path, digits_data) -> Path:
    shutil.copytree(digits_data, tmp_path / "data")
    return tmp_path


def tune_stage(project: Path, raw: dict, wait=True):
    write_params(project / "params.yaml", raw)
    cmd = [sys.executable, "-m", "pipeline.stages.tune", EXP]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    if not wait:  # in a session of its own, so that `stop` ends its workers with it
        return subprocess.Popen(
            cmd,
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)


def stop(proc: subprocess.Popen) -> None:
    """Kill a stage started with `tune_stage(wait=False)` and everything it started."""
    with contextlib.suppress(ProcessLookupError):  # the session is already gone
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def study_of(project: Path) -> optuna.Study:
    storage = studies.open_storage(str(project / paths.study_journal(EXP)), 1)
    [name] = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def mlflow_runs(project: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == "dl-pipeline"]
    return client.search_runs([experiment.experiment_id], max_results=1000)


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def running_trial(project: Path):
    if not (project / paths.study_journal(EXP)).exists():
        return None
    try:
        study = study_of(project)
    except ValueError:  # the study is not created yet
        return None
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    # mid-training: its MLflow run is open and it has reported an epoch
    return next(
        (t for t in running if "mlflow_run_id" in t.user_attrs and t.intermediate_values), None
    )


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_finish_exactly_n_trials_nested_in_mlflow(project):
    proc = tune_stage(project, params_with(workers=2, n_trials=6, pruner="none"))
    assert proc.returncode == 0, proc.stderr
    trials = study_of(project).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    assert sorted(t.number for t in trials) == list(range(6))
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2  # both workers ran trials
    # a line per finished trial, from whichever worker ran it
    lines = [line for line in proc.stdout.splitlines() if line.startswith(f"tune@{EXP}: trial ")]
    assert sorted(int(line.split()[2]) for line in lines) == list(range(6))
    pattern = rf"tune@{EXP}: trial \d COMPLETE, val/accuracy [\d.]+; best val/accuracy [\d.]+ "
    pattern += r"\(trial \d\)"
    assert all(re.fullmatch(pattern, line) for line in lines), lines

    summary = json.loads((project / paths.tuning_summary(EXP)).read_text())
    best = max(trials, key=lambda t: t.value)
    assert summary["best"]["number"] == best.number
    tuned = yaml.safe_load((project / paths.tuned_file(EXP)).read_text())
    assert tuned == {"train": {"optimizer": {"lr": best.params["train.optimizer.lr"]}}}
    assert {p.name for p in (project / paths.tuning_plots_dir(EXP)).iterdir()} == {
        "history.png",
        "importances.png",
        "parallel.png",
    }
    rows = (project / paths.trials_csv(EXP)).read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("number,state")

    runs = mlflow_runs(project)
    [parent] = [r for r in runs if r.info.run_name == f"{EXP}/tune"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6
    assert {r.data.tags["pipeline.trial_state"] for r in children} == {"COMPLETE"}
    assert all(r.info.status == "FINISHED" for r in children)
    assert all("val/accuracy" in r.data.metrics for r in children)  # per-epoch metrics
    assert parent.data.metrics["trials_complete"] == 6
    assert parent.data.metrics["best/val/accuracy"] == pytest.approx(best.value)


@pytest.mark.slow
@pytest.mark.integration
def test_pruning_stops_hopeless_trials_and_a_nan_trial_fails_while_the_study_goes_on(project):
    # a hopeless learning rate beside a good one: once a good trial has finished, the median
    # pruner stops the hopeless ones after their first epoch; a huge one makes the loss NaN
    space = {
        "train.optimizer.lr": {"type": "categorical", "choices": [0.03, 1e-7, 1e12]},
        "seed": {"type": "int", "low": 0, "high": 2},
    }
    raw = params_with(
        space=space,
        sampler="grid",
        seed=3,  # this grid order puts a good trial first (Optuna 5.0), so pruning can start
        n_trials=9,
        startup_trials=1,
        warmup_epochs=1,
    )
    raw["defaults"]["train"].update(grad_clip=None, optimizer={"name": "sgd"})
    proc = tune_stage(project, raw)
    assert proc.returncode == 0, proc.stderr
    trials = study_of(project).get_trials()
    assert len(trials) == 9
    by_lr = {}
    for t in trials:
        by_lr.setdefault(t.params["train.optimizer.lr"], []).append(t)
    assert {t.state.name for t in by_lr[1e12]} == {"FAIL"}  # diverged: failed, not fatal
    assert re.search(
        rf"^tune@{EXP}: trial \d PRUNED after epoch \d, val/accuracy [\d.]+; best ",
        proc.stdout,
        re.M,
    )
    assert re.search(rf"^tune@{EXP}: trial \d FAIL(; best |$)", proc.stdout, re.M)
    assert "PRUNED" in {t.state.name for t in by_lr[1e-7]}
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert all(t.user_attrs["epochs"] < 4 for t in pruned)
    tuned = yaml.safe_load((project / paths.tuned_file(EXP)).read_text())
    assert tuned["train"]["optimizer"]["lr"] == 0.03


@pytest.mark.slow
@pytest.mark.integration
def test_a_worker_killed_mid_trial_is_retried_with_the_same_params(project):
    raw = params_with(workers=2, n_trials=4, pruner="none")
    raw["defaults"]["train"].update(epochs=30, batch_size=8)  # trials of a few seconds
    proc = tune_stage(project, raw, wait=False)
    try:
        victim = wait_for(lambda: running_trial(project), what="a running trial")
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    assert f"exited with -{signal.SIGKILL}" in err
    trials = study_of(project).get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    killed = trials[victim.number]
    assert killed.state.name == "FAIL"
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.params == killed.params and retry.state.name == "COMPLETE"
    assert len(studies.finished(trials)) == 4
    # the killed trial's MLflow run is closed as FAILED, not left RUNNING
    runs = {r.info.run_id: r for r in mlflow_runs(project)}
    assert runs[killed.user_attrs["mlflow_run_id"]].info.status == "FAILED"


HOLD_LOCK = """
import sys, time
from pipeline.tuning import studies
storage = studies.open_storage(sys.argv[1], 1)
storage._backend._lock.acquire()  # as a worker does for each write to the journal
print("held", flush=True)
time.sleep(600)
"""
CREATE_STUDY = """
import sys
import optuna
from pipeline.tuning import studies
studies.LOCK_GRACE_SECONDS = 3  # Optuna warns below 3
optuna.create_study(study_name="after", storage=studies.open_storage(sys.argv[1], 1))
"""


@pytest.mark.integration
def test_a_worker_killed_holding_the_journal_lock_does_not_block_the_others(tmp_path):
    journal = str(paths.study_journal("mlp"))  # relative, as the stages name it
    (tmp_path / paths.tuning_dir("mlp")).mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, journal],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.kill()  # SIGKILL: the lock is left behind
        holder.wait()
        assert (tmp_path / (journal + ".lock")).is_symlink()
        other = subprocess.run(
            [sys.executable, "-c", CREATE_STUDY, journal],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        if holder.poll() is None:
            holder.kill()
    assert other.returncode == 0, other.stderr
    assert "Forcibly releasing the lock file" in other.stderr
    storage = studies.open_storage(str(tmp_path / journal), 1)
    assert optuna.get_all_study_names(storage) == ["after"]


def alive(pid: int) -> bool:
    """Running, zombies counted as gone (an orphan's reaper may be slow to collect it), which
    is why this is not `cores.alive`."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.integration
def test_workers_end_when_their_tune_stage_is_killed(project):
    raw = params_with(workers=2, n_trials=200, pruner="none")  # far more than 30 s of work
    raw["defaults"]["train"].update(epochs=30, batch_size=8)
    proc = tune_stage(project, raw, wait=False)
    try:
        trial = wait_for(lambda: running_trial(project), what="a running trial")
        worker = trial.user_attrs["worker_pid"]
        assert worker != proc.pid and alive(worker)
        proc.kill()  # SIGKILL the stage alone; its workers are not told
        proc.wait()
        wait_for(lambda: not alive(worker), timeout=30, what=f"worker {worker} to exit")
    finally:
        stop(proc)


@pytest.mark.slow
@pytest.mark.integration
def test_an_interrupted_stage_resumes_its_study_and_raising_n_trials_continues_it(project):
    raw = params_with(n_trials=3, pruner="none")
    raw["defaults"]["train"].update(epochs=30, batch_size=8)
    proc = tune_stage(project, raw, wait=False)
    try:
        first = wait_for(lambda: running_trial(project), what="a running trial")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode != 0
    assert not (project / paths.tuned_file(EXP)).exists()  # nothing partial
    interrupted = study_of(project).get_trials()
    assert interrupted[first.number].state.name == "FAIL"  # failed and queued again at once
    assert interrupted[-1].state.name == "WAITING"
    [parent_before] = [r for r in mlflow_runs(project) if r.info.run_name == f"{EXP}/tune"]
    assert parent_before.info.status == "KILLED"

    assert tune_stage(project, raw).returncode == 0
    raw["experiments"][EXP]["tune"]["n_trials"] = 5  # not part of the study's identity
    assert tune_stage(project, raw).returncode == 0
    trials = study_of(project).get_trials()
    assert len(studies.finished(trials)) == 5
    assert (
        len(
            optuna.get_all_study_names(
                studies.open_storage(str(project / paths.study_journal(EXP)), 1)
            )
        )
        == 1
    )
    parents = [r for r in mlflow_runs(project) if r.info.run_name == f"{EXP}/tune"]
    assert [p.info.run_id for p in parents] == [parent_before.info.run_id]  # one parent, kept
    assert parents[0].info.status == "FINISHED"
    children = [
        r
        for r in mlflow_runs(project)
        if r.data.tags.get("mlflow.parentRunId") == parent_before.info.run_id
    ]
    assert len(children) == len(trials)


@pytest.mark.slow
@pytest.mark.integration
def test_multi_objective_reports_the_pareto_front(project):
    space = {"model.hidden_sizes": {"type": "categorical", "choices": [[4], [16], [64]]}}
    raw = params_with(
        space=space,
        metric=["val/accuracy", "parameters"],
        sampler="nsgaii",
        pruner="none",
        n_trials=4,
    )
    proc = tune_stage(project, raw)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((project / paths.tuning_summary(EXP)).read_text())
    front = summary["pareto_front"]
    assert front and summary["best"]["number"] in [t["number"] for t in front]
    assert set(summary["best"]["values"]) == {"val/accuracy", "parameters"}
    assert (project / paths.tuning_plots_dir(EXP) / "pareto.png").is_file()
    assert re.search(r", parameters \d+; Pareto front: \d trial\(s\)$", proc.stdout, re.M)
    tuned = yaml.safe_load((project / paths.tuned_file(EXP)).read_text())
    assert tuned["model"]["hidden_sizes"] == summary["best"]["params"]["model.hidden_sizes"]


@pytest.mark.slow  # stage processes on real data: make test, not test-fast
def test_tuning_off_writes_empty_overrides(project):
    raw = params_with(enabled=False)
    proc = tune_stage(project, raw)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((project / paths.tuned_file(EXP)).read_text()) == {}
    # no study, no trials, no "tuning off" figure; each folder DVC records holds a file that
    # says tuning is off, so `dvc repro` has no empty output to warn about
    assert [p.name for p in (project / paths.tuning_dir(EXP)).iterdir()] == ["tuned.yaml"]
    assert [p.name for p in (project / paths.tuning_report_dir(EXP)).iterdir()] == ["tuning.json"]
    assert json.loads((project / paths.tuning_summary(EXP)).read_text()) == {"enabled": False}
    assert not (project / "mlflow.db").exists()  # no tracking, no torch: a cheap no-op


@pytest.mark.slow  # stage processes on real data: make test, not test-fast
def test_bad_space_fails_before_any_trial(project):
    raw = params_with(space={"train.optimizer.lr": {"type": "float", "low": 1, "high": 0}})
    proc = tune_stage(project, raw)
    assert proc.returncode == 2
    assert "experiments.mlp.tune.space.train.optimizer.lr" in proc.stderr
    assert not (project / paths.artifact_dir(EXP)).exists()


def test_shipped_params_tune_the_digits_cnn():
    params = load_params(ROOT / "params.yaml")
    tune = params.experiments["cnn_digits"].tune
    assert tune.enabled and 15 <= tune.n_trials <= 30 and tune.pruner != "none"
    assert {"train.optimizer.lr", "train.optimizer.name", "model.dropout"} <= set(tune.space)
    assert "model.channels" in tune.space  # width
    assert not any(e.tune.enabled for n, e in params.experiments.items() if n != "cnn_digits")


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp", "grid", "nsgaii"])
def test_every_sampler_searches_a_declared_space(sampler):
    lr = {"type": "float", "low": 0.001, "high": 0.1}
    lr.update({"step": 0.033} if sampler == "grid" else {"log": True})
    tune = TuneParams(
        enabled=True,
        sampler=sampler,
        space={
            "train.optimizer.lr": lr,
            "train.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
            "model.hidden_sizes": {"type": "categorical", "choices": [[8], [8, 8]]},
        },
    )
    study = optuna.create_study(sampler=search.make_sampler(tune, 0))

    def objective(trial):
        values = search.sample(trial, tune, {})
        assert 0.001 <= values["train.optimizer.lr"] <= 0.1
        assert values["train.batch_size"] in (16, 32, 48, 64)
        assert values["model.hidden_sizes"] in ([8], [8, 8])
        return values["train.optimizer.lr"] + values["train.batch_size"] / 64

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=6)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6


def test_declared_pruners_are_optunas():
    kinds = {"median": "MedianPruner", "hyperband": "HyperbandPruner"}
    kinds |= {"successive_halving": "SuccessiveHalvingPruner", "none": "NopPruner"}
    for name, cls in kinds.items():
        assert type(search.make_pruner(TuneParams(pruner=name), 10)).__name__ == cls


@pytest.mark.slow
@pytest.mark.integration
def test_rdb_storage_and_timeout_stop_the_study_early(project):
    # the budget counts from the study's creation, before the tracking store opens: a timeout
    # spent on set-up (as on a loaded machine) still runs one trial, and only one
    raw = params_with(storage="sqlite:///optuna.db", timeout=0.01, n_trials=200, pruner="none")
    proc = tune_stage(project, raw)
    assert proc.returncode == 0, proc.stderr
    assert "tune.timeout passed before any trial ran; running one" in proc.stderr
    storage = studies.open_storage("sqlite:///" + str(project / "optuna.db"), 1)
    [name] = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"]
    assert not (project / paths.study_journal(EXP)).exists()  # the database holds the study
    assert yaml.safe_load((project / paths.tuned_file(EXP)).read_text())["train"]


@pytest.mark.slow
@pytest.mark.integration
def test_a_worker_joins_an_existing_study_from_the_command_line(project):
    raw = params_with(n_trials=2, pruner="none")
    assert tune_stage(project, raw).returncode == 0
    raw["experiments"][EXP]["tune"]["n_trials"] = 3  # room for one more trial
    write_params(project / "params.yaml", raw)
    cmd = [sys.executable, "-m", "pipeline.tuning.worker", "--experiment", EXP]
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ran 1 trials" in proc.stderr
    trials = study_of(project).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    # the joined trial's run nests under the study's one parent run
    runs = mlflow_runs(project)
    [parent] = [r for r in runs if r.info.run_name == f"{EXP}/tune"]
    joined = trials[2].user_attrs["mlflow_run_id"]
    assert {r.info.run_id: r for r in runs}[joined].data.tags["mlflow.parentRunId"] == (
        parent.info.run_id
    )

    missing = subprocess.run(
        [*cmd, "--study", "nope"], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert missing.returncode == 2
    assert "no study 'nope'" in missing.stderr and "Traceback" not in missing.stderr


def test_the_study_name_follows_training_not_evaluation_or_budget(tmp_path):
    params = load_params(write_params(tmp_path / "params.yaml", params_with()))
    exp = params.experiments[EXP]
    name = studies.study_name(EXP, exp)
    budget = exp.model_copy(update={"tune": exp.tune.model_copy(update={"n_trials": 99})})
    evaluation = exp.model_copy(
        update={"evaluate": exp.evaluate.model_copy(update={"batch_size": 7})}
    )
    training = exp.model_copy(update={"train": exp.train.model_copy(update={"epochs": 9})})
    assert studies.study_name(EXP, budget) == studies.study_name(EXP, evaluation) == name
    assert studies.study_name(EXP, training) != name


@pytest.mark.slow
@pytest.mark.integration
def test_workers_started_apart_share_one_postgresql_study(project, postgres):
    """`tune.storage: postgresql://...`: three `pipeline.tuning.worker` processes started on
    their own (as on three machines) at once on a fresh database join the study the stage
    creates; one is killed mid-trial and its trial is retried from the stale heartbeat; the
    study ends with exactly n_trials."""
    url = postgres.create_database("optuna_workers")
    raw = params_with(storage=url, workers=1, n_trials=10, pruner="none")
    # trials of a few seconds, so that the joined workers (starting beside the stage) get some
    raw["defaults"]["train"].update(epochs=30, batch_size=32)
    write_params(project / "params.yaml", raw)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    join = [sys.executable, "-m", "pipeline.tuning.worker", "--experiment", EXP, "--wait", "300"]
    logs = [project / f"worker-{i}.log" for i in range(3)]
    workers = []
    for log in logs:
        with log.open("w") as out:
            workers.append(subprocess.Popen(join, cwd=project, env=env, stderr=out, text=True))
    # the stage starts once every worker waits for its study: on a busy machine a worker
    # still importing could otherwise find the stage's own worker done with all 10 trials
    waiting = ": waiting up to 300 s for study "
    for log in logs:
        wait_for(lambda log=log: waiting in log.read_text(), 300, f"{log.name} to wait")
    stage = tune_stage(project, raw, wait=False)

    storage = studies.open_storage(url, 1)  # one connection pool for all the polling below

    def study():
        names = optuna.get_all_study_names(storage)
        return optuna.load_study(study_name=names[0], storage=storage) if names else None

    def running_elsewhere():
        s = study()
        pids = {w.pid for w in workers}
        running = s.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if s else []
        # one whose params are drawn: a retry repeats those, and they are what we compare
        mine = (t for t in running if t.user_attrs.get("worker_pid") in pids and t.params)
        return next(mine, None)

    try:
        victim = wait_for(running_elsewhere, what="a trial running in a joined worker")
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        _, err = stage.communicate(timeout=600)
        for w in workers:
            w.wait(timeout=300)
        outputs = [log.read_text()[-3000:] for log in logs]
    finally:
        stop(stage)
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
    assert stage.returncode == 0, err
    killed = next(w for w in workers if w.pid == victim.user_attrs["worker_pid"])
    assert killed.returncode == -signal.SIGKILL
    assert [w.returncode for w in workers if w is not killed] == [0, 0], "\n".join(outputs)
    trials = study().get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert len(studies.finished(trials)) == 10
    assert trials[victim.number].state.name == "FAIL"
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.params == victim.params and retry.state.name == "COMPLETE"
    # the joined workers ran trials of their own
    by_pid = {t.user_attrs["worker_pid"] for t in trials if t.state.name == "COMPLETE"}
    assert len(by_pid & {w.pid for w in workers}) >= 2
    assert not (project / paths.study_journal(EXP)).exists()  # the database holds it
