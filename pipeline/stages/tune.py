"""tune@<experiment>: an Optuna search over the experiment's declared space -> tuned.yaml.

The stage creates (or resumes) the study, runs `tune.workers` workers on it, waits for every
trial to end (failing and re-queueing those of dead workers), then writes the best trial's
params as overrides for train@, trials.csv, tuning.json and the figures. With tuning off it
writes empty overrides, so every experiment has the same stages.
"""

from __future__ import annotations

import shutil
import sys
import time

import yaml

from pipeline import atomic, paths, plots
from pipeline.config import ExperimentParams, Params, flatten, unflatten
from pipeline.errors import PipelineError
from pipeline.stages import stage_main


def run(params: Params, experiment: str) -> dict | None:
    exp = params.experiments[experiment]
    if not exp.tune.enabled:
        write_tuning_off(experiment)
        return None
    return tune_experiment(experiment, exp)


def tune_experiment(experiment: str, exp: ExperimentParams) -> dict:
    from pipeline import tracking
    from pipeline.tracking import store
    from pipeline.tuning import results, runner, studies

    tune = exp.tune
    url = studies.storage_url(experiment, tune)
    study = studies.create_study(experiment, exp, studies.open_storage(url, tune.heartbeat_seconds))
    start = time.time()
    deadline = start + tune.timeout if tune.timeout else None
    tags = {
        "stage": "tune",
        "experiment": experiment,
        "dataset": exp.dataset,
        "model": exp.model.name,
        "study": study.study_name,
        "n_trials": str(tune.n_trials),
        "dvc.data_hash": tracking.dvc_data_hash(exp.dataset),
    }
    parent_id = study.user_attrs.get("mlflow_run_id")
    with tracking.stage_run(
        exp.tracking, name=f"{experiment}/tune", tags=tags, resume_run_id=parent_id
    ) as run:
        # a new study (or its parent run is gone from the store); with tracking off the id is
        # None, which still tells waiting workers the study is ready
        if "mlflow_run_id" not in study.user_attrs or run.run_id != parent_id:
            study.set_user_attr("mlflow_run_id", run.run_id)
            settings = tune.model_dump(mode="json", exclude={"space", "n_trials", "storage"})
            run.log_params(flatten(settings, "tune"))
            run.log_dict(tune.model_dump(mode="json")["space"], "search_space.json")
        done = len(studies.finished(study.get_trials(deepcopy=False)))
        print(
            f"tune@{experiment}: study {study.study_name} in {url}: {done} of {tune.n_trials} "
            f"trials done; {tune.workers} worker(s)",
            file=sys.stderr,
        )
        runner.run_workers(experiment, exp, url, study.study_name, deadline)
        runner.settle(experiment, exp, url, study, deadline)

        trials = study.get_trials(deepcopy=False)
        store.close_lost_trial_runs(exp.tracking, results.failed_run_ids(trials))
        if not any(t.state.name == "COMPLETE" for t in trials):
            states = {t.state.name for t in trials}
            raise PipelineError(
                f"no trial of study {study.study_name} completed (states: {sorted(states)}); "
                "see the trial runs in MLflow, widen the space or lower the pruner's strictness"
            )
        summary, best, values = write_results(run, experiment, study, tune, time.time() - start)
    states = summary["states"]
    print(
        f"tune@{experiment}: best trial {best.number} ({values}); "
        f"{states['COMPLETE']} complete, {states['PRUNED']} pruned, {states['FAIL']} failed; "
        f"{summary['total_epochs']} epochs in {summary['seconds']:.0f} s",
        file=sys.stderr,
    )
    return summary


def write_results(run, experiment: str, study, tune, seconds: float):
    """The finished study's outputs: tuned.yaml (last: train@ depends on it), trials.csv,
    tuning.json, the figures, and the best values and params on the stage's MLflow run."""
    from pipeline.metrics import history_csv
    from pipeline.tuning import results

    best = results.chosen_trial(study, tune)
    summary = results.summary(study, tune, best, seconds)
    rows = results.trial_rows(study, tune)
    figures = results.figures(study, tune, experiment)
    overrides = unflatten(summary["best"]["params"])

    run.log_metrics(
        {
            **{f"best/{k}": v for k, v in summary["best"]["values"].items()},
            **{f"trials_{k.lower()}": v for k, v in summary["states"].items()},
            "total_epochs": summary["total_epochs"],
            "tune_seconds": summary["seconds"],
        }
    )
    run.set_tags(
        {f"best.{k}": str(v) for k, v in flatten(summary["best"]["params"]).items()}
        | {"best.trial": str(best.number)}
    )
    with atomic.atomic_dir(paths.tuning_plots_dir(experiment)) as tmp:
        for name, fig in figures.items():
            plots.save(fig, tmp / f"{name}.png")
            run.log_artifact(tmp / f"{name}.png", "tuning")
    atomic.write_text(paths.trials_csv(experiment), history_csv(rows))
    atomic.write_json(paths.tuning_summary(experiment), summary)
    values = ", ".join(f"{k}={v:.6g}" for k, v in summary["best"]["values"].items())
    header = f"# tune@{experiment}: trial {best.number} of {study.study_name} ({values})\n"
    # written last: train@ depends on it
    atomic.write_text(
        paths.tuned_file(experiment), header + yaml.safe_dump(overrides, sort_keys=False)
    )
    for path in (paths.trials_csv, paths.tuning_summary, paths.tuned_file):
        run.log_artifact(path(experiment))
    return summary, best, values


def write_tuning_off(experiment: str) -> None:
    """The outputs of an experiment that is not tuned: empty overrides, a summary that says
    so, no trials and no figures (a figure saying "nothing" is noise). A journal from an
    earlier search stays: turning tuning back on resumes it."""
    note = f"tuning is off for {experiment} (tune.enabled: false)"
    shutil.rmtree(paths.tuning_plots_dir(experiment), ignore_errors=True)
    paths.trials_csv(experiment).unlink(missing_ok=True)
    atomic.write_json(paths.tuning_summary(experiment), {"enabled": False})
    atomic.write_text(paths.tuned_file(experiment), f"# {note}: no overrides\n{{}}\n")


def tracked(params: Params, experiment: str):
    """The study's run's tracking settings; none when tuning is off (no run)."""
    exp = params.experiments[experiment]
    return exp.tracking if exp.tune.enabled else None


def main(argv=None) -> int:
    return stage_main("tune", run, argv, target="experiment", tracked=tracked)


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
