"""train@<experiment>: fit the experiment's model; write model.pt, history.csv, config.yaml."""

from __future__ import annotations

import dataclasses
import json

import yaml

from pipeline import atomic, distributed, paths, plots, tracking
from pipeline.config import ExperimentParams, Params, flatten
from pipeline.experiment import prepare, resolved_experiment
from pipeline.metrics import curves_csv, history_csv
from pipeline.stages import stage_main
from pipeline.tasks.kinds import KINDS, task_kind
from pipeline.tracking import registry


def run(params: Params, experiment: str):
    exp, tuned = resolved_experiment(params, experiment)
    if exp.train.distributed == "ddp" and not distributed.in_worker():
        distributed.launch(experiment, params.source, exp.train.nproc_per_node)
        return json.loads(paths.train_summary_file(experiment).read_text())
    try:
        return train(exp, tuned, experiment)
    finally:
        distributed.teardown()


def train(exp: ExperimentParams, tuned: dict, experiment: str) -> dict:
    """Fit the resolved experiment and write its outputs (in a torchrun worker: train its
    shard; rank 0 alone logs to MLflow and writes files)."""

    from pipeline import engine

    main = distributed.is_main()
    if tuned and main:
        applied = ", ".join(f"{k}={v}" for k, v in flatten(tuned).items())
        print(f"train@{experiment}: tuned params from {paths.tuned_file(experiment)}: {applied}")
    # what is trained; the tracking settings are not part of it (nor a DVC param of train): a
    # run with tracking off writes the same bytes and resumes the same checkpoint
    config = exp.model_dump(mode="json", exclude={"tune", "tracking"})
    prep = prepare(exp, experiment)
    model, schema, arrays = prep.model, prep.schema, prep.arrays
    track = exp.tracking if main else exp.tracking.model_copy(update={"enabled": False})

    tags = {
        "stage": "train",
        "experiment": experiment,
        "dataset": exp.dataset,
        "model": exp.model.name,
        "dvc.data_hash": tracking.dvc_data_hash(exp.dataset),
        "tuned": str(bool(tuned)).lower(),
        "world_size": str(distributed.world_size()),
    }
    with tracking.stage_run(track, name=f"{experiment}/train", tags=tags) as run:
        log_inputs(run, experiment, config, tuned, prep, main)
        n_params = sum(p.numel() for p in model.parameters())
        result = engine.fit(
            model,
            prep.train,
            prep.val,
            exp.train,
            prep.task,
            checkpoint_path=paths.checkpoint_file(experiment),
            run_key=engine.config_key(config),
            on_epoch=lambda epoch, row: run.log_metrics(
                {k: v for k, v in row.items() if k != "epoch"}, step=epoch
            ),
            desc=experiment,
        )
        summary = {
            "experiment": experiment,
            "mlflow_run_id": run.run_id,
            "device": str(prep.device),
            "parameters": n_params,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "kept_epoch": result.kept_epoch,
            f"best_{exp.train.early_stopping.metric}": result.best_score,
            "stopped_early": result.stopped_early,
            "resumed_from_epoch": result.resumed_from_epoch,
            "world_size": distributed.world_size(),
            "train_seconds": round(result.seconds, 3),
            "samples_per_second": round(result.samples_per_second, 1),
            "threads": result.threads,
        }
        run.log_metrics(
            {
                "parameters": n_params,
                "best_epoch": result.best_epoch,
                "train_seconds": result.seconds,
                "samples_per_second": result.samples_per_second,
            }
        )
        run.set_tags({"mlflow.note.content": description(experiment, exp, summary, result)})
        if not main:
            return summary  # rank 0 writes the outputs
        saved = saved_model(exp, prep)
        if track.enabled and track.log_model:
            name = registry.registered_name(exp.tracking, experiment)
            example = arrays["train_x"][:4]
            logged = log_model(run, model, saved, schema, exp.model.name, name, example)
            summary["registered_model"] = {"name": name, **logged}
        engine.save_tensors(paths.model_file(experiment), saved)
        atomic.write_text(paths.history_file(experiment), history_csv(result.history))
        atomic.write_text(paths.curves_file(experiment), curves_csv(result.history))
        atomic.write_text(
            paths.resolved_config_file(experiment), yaml.safe_dump(config, sort_keys=False)
        )
        atomic.write_json(paths.train_summary_file(experiment), summary)
    return summary


def description(experiment: str, exp: ExperimentParams, summary: dict, result) -> str:
    """The run's description in the MLflow UI: what was trained and how training went."""
    metric = exp.train.early_stopping.metric
    best = f"{result.best_score:.4f}" if result.best_score is not None else "n/a"
    return (
        f"{experiment}: {exp.model.name} ({summary['parameters']:,} parameters) trained on "
        f"{exp.dataset} for {summary['epochs_run']} epochs"
        + (" (stopped early)" if result.stopped_early else "")
        + f"; best {metric} {best} at epoch {result.best_epoch}, weights of epoch "
        f"{result.kept_epoch} kept; "
        f"{result.seconds:.1f} s on {summary['device']}. Test metrics are logged here by "
        f"evaluate@{experiment}."
    )


def log_inputs(run, experiment: str, config: dict, tuned: dict, prep, main: bool) -> None:
    """What the run trains from: params, the resolved config and tuned overrides, the
    augmentation preview and the train/val data."""
    run.log_params(flatten(config))
    run.log_dict(config, "config.yaml")
    if tuned:
        run.log_dict(tuned, "tuned.yaml")
    if main:
        # the curves join it after training
        with atomic.atomic_dir(paths.train_plots_dir(experiment)) as tmp:
            images = prep.train.head(8)
            if images.dim() == 4:  # other inputs have no picture
                preview = tmp / paths.augment_preview(experiment).name
                plots.save(augmentation_preview(images, prep.augment_fn, experiment), preview)
                run.log_artifact(preview)
    arrays, schema = prep.arrays, prep.schema
    run.log_dataset(schema, "train", arrays["train_x"], arrays["train_y"], context="training")
    run.log_dataset(schema, "val", arrays["val_x"], arrays["val_y"], context="validation")


def saved_model(exp: ExperimentParams, prep) -> dict:
    """The model.pt dict: the family's config, the data spec and every trained weight."""
    model_config = exp.model.model_dump(mode="json")
    if model_config.get("weights"):  # the state_dict holds every trained weight: a
        model_config["weights"] = None  # rebuild (e.g. by a served model) loads no file
    return {
        "model": model_config,
        "spec": dataclasses.asdict(prep.spec),
        "state_dict": prep.model.cpu().state_dict(),
    }


def log_model(run, model, saved: dict, schema: dict, model_name: str, registered: str, example):
    """Register the trained model. Predictive models become a pyfunc over raw inputs that
    carries the dataset's fitted preprocessor; language and generative models are logged as
    torch modules over the model's own tensors."""
    import tempfile
    from pathlib import Path

    import torch

    prep_path = paths.preprocessor_file(schema["dataset"])
    served = KINDS[task_kind(model_name, schema["task"])].served
    if not served or not prep_path.is_file():
        return run.log_torch_model(model, example, registered_name=registered)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.pt"
        torch.save(saved, weights)
        return run.log_raw_input_model(model, weights, prep_path, registered_name=registered)


def augmentation_preview(images, augment_fn, experiment: str):
    """Row 1: training images as stored; rows 2-4: three augmented draws of them."""
    import torch

    from pipeline.evaluation.images import unit_range

    rows = [images] + [augment_fn(images) if augment_fn else images for _ in range(3)]
    grid = unit_range(torch.cat(rows).cpu())
    title = f"{experiment}: " + ("original, then augmented" if augment_fn else "no augmentation")
    return plots.image_grid(grid.numpy(), title, ncols=len(images))


def tracked(params: Params, experiment: str):
    """The run's tracking settings; none in the process that launches DDP workers (rank 0
    tracks)."""
    exp = params.experiments[experiment]
    launches = exp.train.distributed == "ddp" and not distributed.in_worker()
    return None if launches else exp.tracking


def main(argv=None) -> int:
    return stage_main("train", run, argv, target="experiment", tracked=tracked, logs_model=True)


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
