"""evaluate@<experiment>: test-split metrics beside baselines, figures, details, summary."""

from __future__ import annotations

import csv
import json
import sys

from pipeline import atomic, paths, plots, tracking
from pipeline.config import Params
from pipeline.data import datasets
from pipeline.experiment import in_memory, load_trained_model, resolved_experiment
from pipeline.metrics import headline, interval_half_width, with_interval
from pipeline.stages import experiment_tracking, stage_main
from pipeline.tasks.kinds import KINDS, task_kind


def run(params: Params, experiment: str) -> dict[str, float]:
    from pipeline import engine, evaluation

    exp, _ = resolved_experiment(params, experiment)
    schema = datasets.load_schema(exp.dataset)
    device = engine.select_device(exp.device)
    arrays = datasets.load_arrays(
        exp.dataset, "test", on_disk=not in_memory(exp, device, ("test",))
    )
    inputs = evaluation.Inputs(
        experiment=experiment,
        exp=exp,
        schema=schema,
        model=load_trained_model(experiment).to(device),
        batches=engine.Batches(
            arrays["x"],
            arrays["y"],
            exp.evaluate.batch_size,
            device=device,
            shuffle=False,
            workers=exp.data.workers(),
        ),
        arrays=arrays,
    )
    kind = task_kind(exp.model.name, schema["task"])
    result = evaluation.evaluate(kind, inputs)

    train_info = json.loads(paths.train_summary_file(experiment).read_text())
    with paths.history_file(experiment).open() as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    result.figures["curves"] = plots.curves_figure(history, experiment)
    tags = {
        "stage": "evaluate",
        "experiment": experiment,
        "dataset": exp.dataset,
        "model": exp.model.name,
        "task": kind,
        "dvc.data_hash": tracking.dvc_data_hash(exp.dataset),
    }
    with tracking.stage_run(
        exp.tracking,
        name=f"{experiment}/evaluate",
        tags=tags,
        parent_run_id=train_info.get("mlflow_run_id"),
    ) as run:
        run.log_dataset(schema, "test", arrays["x"], arrays["y"], context="testing")
        run.log_metrics(result.metrics)
        registered = train_info.get("registered_model") or {}
        tested = {k: v for k, v in result.metrics.items() if k.startswith("test/")}
        main = KINDS[kind].main_metric
        version_tag = {main: with_interval(result.metrics, main)}
        run.log_test_metrics_on_train(
            train_info.get("mlflow_run_id"), tested, registered, version_tag
        )
        run.set_tags({"mlflow.note.content": description(experiment, kind, result.metrics, schema)})
        decision = None  # how this run went in the registry: summary.json, not details.json
        if registered.get("version"):
            decision = decide_champion(run, exp, kind, registered, result)
            print(
                f"evaluate@{experiment}: {registered['name']} v{registered['version']} "
                f"{'is now' if decision['promoted'] else 'is not'} champion: {decision['reason']}",
                file=sys.stderr,
            )
        result.details["metrics"] = result.metrics  # every test metric; metrics.json: the headline
        run.log_dict(result.details, "details.json")
        with atomic.atomic_dir(paths.plots_dir(experiment)) as tmp:
            for name, fig in result.figures.items():
                plots.save(fig, tmp / f"{name}.png")
                run.log_artifact(tmp / f"{name}.png", "plots")
            if result.confusion_csv is not None:  # an empty plot is no plot: write none
                (tmp / paths.confusion_csv(experiment).name).write_text(result.confusion_csv)
        atomic.write_json(paths.details_file(experiment), result.details)
        summary = {
            "experiment": experiment,
            "dataset": exp.dataset,
            "model": exp.model.name,
            "task": kind,
            "metrics": result.metrics,
            "figures": sorted(result.figures),
            "train": train_info,
            "evaluate_run_id": run.run_id,
            "data": {
                "dvc_hash": tags["dvc.data_hash"],
                "counts": schema["counts"],
                **({"synthetic": schema["synthetic"]} if "synthetic" in schema else {}),
            },
            "registry": decision,
            "params": exp.model_dump(mode="json"),
        }
        atomic.write_json(paths.summary_file(experiment), summary)
        # written last: DVC treats metrics.json as the stage's result
        atomic.write_json(
            paths.metrics_file(experiment),
            headline(result.metrics, main, KINDS[kind].baseline_ratio),
        )
    return result.metrics


def description(experiment: str, kind: str, metrics: dict, schema: dict) -> str:
    """The run's description in the MLflow UI: what was tested and the key result."""
    task = KINDS[kind]
    name = task.main_metric
    text = (
        f"{experiment} on {schema['counts']['test']:,} test samples of {schema['dataset']}: "
        f"{name} {with_interval(metrics, name)}"
        f" ({'higher' if task.higher_is_better else 'lower'} is better)"
    )
    if task.baseline_ratio in metrics:
        text += f"; {metrics[task.baseline_ratio]:.3f}x the baseline's ({task.baseline_ratio})"
    return text + "."


def decide_champion(run, exp, kind: str, registered: dict, result) -> dict:
    """Move the registry's champion alias to this version only if its main test metric beats
    the champion's by more than half its interval; the decision is logged on the run."""
    metric = KINDS[kind].main_metric
    decision = run.consider_champion(
        exp.tracking,
        registered["name"],
        registered["version"],
        metric,
        result.metrics[metric],
        interval_half_width(result.metrics, metric),
        KINDS[kind].higher_is_better,
    )
    run.set_tags(
        {
            "pipeline.registry.decision": "promoted" if decision["promoted"] else "kept",
            "pipeline.registry.champion": str(decision["champion_after"]),
        }
    )
    run.log_dict(decision, "registry_decision.json")
    return decision


def main(argv=None) -> int:
    return stage_main("evaluate", run, argv, target="experiment", tracked=experiment_tracking)


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
