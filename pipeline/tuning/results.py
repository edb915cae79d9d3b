"""What a finished study yields: the chosen trial, trials.csv rows, tuning.json and figures."""

from __future__ import annotations

import json
import sys
import warnings
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.params.tuning import TuneParams
from pipeline.tuning.search import decoded_params
from pipeline.tuning.studies import finished, lost_trials


def chosen_trial(study: optuna.Study, tune: TuneParams) -> FrozenTrial:
    """The best trial; for several objectives, the declared pick from the Pareto front."""
    if len(study.directions) == 1:
        return study.best_trial
    front = study.best_trials
    signs = [1 if d == "maximize" else -1 for d in tune.directions()]
    if tune.pareto_choice == "first":
        return max(front, key=lambda t: [s * v for s, v in zip(signs, t.values, strict=True)])
    # knee: nearest to the ideal point once each objective is scaled to [0, 1] over the front
    scaled = []
    for i, sign in enumerate(signs):
        vals = [sign * t.values[i] for t in front]
        lo, hi = min(vals), max(vals)
        scaled.append([(hi - v) / (hi - lo) if hi > lo else 0.0 for v in vals])
    distances = [sum(col[j] ** 2 for col in scaled) for j in range(len(front))]
    return front[distances.index(min(distances))]


def trial_rows(study: optuna.Study, tune: TuneParams) -> list[dict]:
    """One row per trial for trials.csv: state, objective values, params, epochs, time."""
    trials = study.get_trials(deepcopy=False)
    lost = lost_trials(trials)
    paths_ = list(tune.space)
    rows = []
    for t in trials:
        row = {
            "number": t.number,
            "state": t.state.name,
            "retry_of": t.system_attrs.get("failed_trial", ""),
            "requeued": t.number in lost,
        }
        for i, metric in enumerate(tune.metrics()):
            row[metric] = t.values[i] if t.values else ""
        params = decoded_params(t, tune)
        for path in paths_:
            value = params.get(path, "")
            row[path] = json.dumps(value) if isinstance(value, list | dict) else value
        for key, value in t.user_attrs.get("val_best", {}).items():
            row[f"best {key}"] = value
        row["epochs"] = t.user_attrs.get("epochs", "")
        seconds = t.duration.total_seconds() if t.duration else ""
        row["seconds"] = round(seconds, 2) if seconds != "" else ""
        row["mlflow_run_id"] = t.user_attrs.get("mlflow_run_id", "")
        rows.append(row)
    return rows


def summary(study: optuna.Study, tune: TuneParams, best: FrozenTrial, seconds: float) -> dict:
    trials = study.get_trials(deepcopy=False)
    done = finished(trials)
    states = {s: sum(t.state.name == s for t in done) for s in ("COMPLETE", "PRUNED", "FAIL")}
    out = {
        "study": study.study_name,
        "sampler": tune.sampler,
        "pruner": tune.pruner,
        "metrics": list(tune.metrics()),
        "directions": list(tune.directions()),
        "n_trials": tune.n_trials,
        "states": states,
        "requeued_after_worker_loss": len(lost_trials(trials)),
        "total_epochs": sum(t.user_attrs.get("epochs", 0) for t in trials),
        "seconds": round(seconds, 2),
        "best": {
            "number": best.number,
            "values": dict(zip(tune.metrics(), best.values, strict=True)),
            "params": decoded_params(best, tune),
        },
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    if len(study.directions) > 1:
        out["pareto_front"] = [
            {
                "number": t.number,
                "values": dict(zip(tune.metrics(), t.values, strict=True)),
                "params": decoded_params(t, tune),
            }
            for t in study.best_trials
        ]
        out["pareto_choice"] = tune.pareto_choice
    return out


def figures(study: optuna.Study, tune: TuneParams, experiment: str) -> dict:
    """Optuna's matplotlib plots (no browser needed); none where a plot needs more trials."""
    from optuna.visualization import matplotlib as ovm

    from pipeline import plots

    plots.pyplot()  # the Agg backend before Optuna touches pyplot
    metrics = tune.metrics()
    target = None if len(metrics) == 1 else (lambda t: t.values[0])
    name = metrics[0]
    makers = {
        "history": lambda: ovm.plot_optimization_history(study, target=target, target_name=name),
        "importances": lambda: ovm.plot_param_importances(study, target=target, target_name=name),
        "parallel": lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=name),
    }
    if len(metrics) > 1:
        makers["pareto"] = lambda: ovm.plot_pareto_front(study, target_names=list(metrics))
    out = {}
    for key, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = make()
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.set_size_inches(8, 5)
                fig.suptitle(f"{experiment}: {key}")
                fig.tight_layout()
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                # a figure that says there is no figure is noise in DVC's plots and the report
                print(f"tune@{experiment}: no {key} figure ({err})", file=sys.stderr)
                continue
        out[key] = fig
    return out


def failed_run_ids(trials: list[FrozenTrial]) -> list[str]:
    """The MLflow runs of failed trials (a killed worker's among them), to be closed."""
    return [
        t.user_attrs["mlflow_run_id"]
        for t in trials
        if t.state == TrialState.FAIL and "mlflow_run_id" in t.user_attrs
    ]
