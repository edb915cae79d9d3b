"""judge@<dataset>: the project's own CNN classifier, trained to score generated images.

Generative experiments are scored in its feature space (a Frechet distance, like FID but with
no Inception download) and by its confidence and class coverage on samples. It trains with
`defaults.train`. Only datasets that a generative experiment uses get one (stages/plan.py);
for the others, and for datasets that are not labelled images, the stage records why not.
"""

from __future__ import annotations

from pipeline import atomic, paths, tracking
from pipeline.config import Params, judged_by
from pipeline.data import datasets
from pipeline.experiment import data_spec, fits_memory
from pipeline.params.training import EarlyStoppingParams
from pipeline.stages import stage_main
from pipeline.tasks.kinds import GENERATIVE

JUDGE_MODEL = {"channels": (32, 64), "hidden_size": 128, "dropout": 0.2}


def applies(schema: dict) -> bool:
    return schema["task"] == "classification" and len(schema["input_shape"]) == 3


def run(params: Params, dataset: str) -> dict:
    if not judged_by(params, dataset):  # costs a process start, no torch and no MLflow run
        info = {
            "applicable": False,
            "reason": f"no generative experiment ({', '.join(GENERATIVE)}) uses it",
        }
        with atomic.atomic_dir(paths.judge_dir(dataset)) as tmp:
            atomic.write_json(tmp / paths.judge_info_file(dataset).name, info)
        print(f"judge@{dataset}: not trained: {info['reason']}")
        return info

    import torch

    from models import build_model
    from pipeline import engine
    from pipeline.evaluation.predictive import classification
    from pipeline.tasks.predictive import Classification

    schema = datasets.load_schema(dataset)
    with tracking.stage_run(
        params.defaults.tracking,
        name=f"{dataset}/judge",
        tags={"stage": "judge", "dataset": dataset},
    ) as run:
        if not applies(schema):
            info = {"applicable": False, "reason": f"{schema['task']} data has no image classes"}
            with atomic.atomic_dir(paths.judge_dir(dataset)) as tmp:
                atomic.write_json(tmp / paths.judge_info_file(dataset).name, info)
            return info
        engine.seed_everything(params.defaults.seed)
        device = engine.select_device(params.defaults.device)
        model = build_model("cnn", JUDGE_MODEL, data_spec(schema)).to(device)
        cfg = params.defaults.train  # the shared recipe, early-stopped on val/loss
        if cfg.early_stopping.metric != "val/loss":
            cfg = cfg.model_copy(update={"early_stopping": EarlyStoppingParams()})
        # each split held in memory or read from disk by the budget, as training does
        data = params.defaults.data
        batches = {
            s: engine.Batches(
                *datasets.load_split(
                    dataset, s, on_disk=not fits_memory(dataset, data, device, splits)
                ),
                64 if s == "train" else 512,
                device=device,
                shuffle=s == "train",
                seed=params.defaults.seed,
                workers=data.workers(),
            )
            for splits in (("train", "val"), ("test",))
            for s in splits
        }
        engine.fit(
            model,
            batches["train"],
            batches["val"],
            cfg,
            Classification(cfg, schema),
            desc=f"judge {dataset}",
        )
        scored = classification(model, batches["test"], schema, dataset)
        info = {
            "applicable": True,
            "model": JUDGE_MODEL,
            "test/accuracy": scored.metrics["test/accuracy"],
        }
        run.log_metrics({"test/accuracy": info["test/accuracy"]})
        with atomic.atomic_dir(paths.judge_dir(dataset)) as tmp:
            torch.save(model.cpu().state_dict(), tmp / paths.judge_model_file(dataset).name)
            atomic.write_json(tmp / paths.judge_info_file(dataset).name, info)
    return info


def tracked(params: Params, dataset: str):
    """The judge's run's tracking settings; none where no judge is trained (no run)."""
    return params.defaults.tracking if judged_by(params, dataset) else None


def main(argv=None) -> int:
    return stage_main("judge", run, argv, target="dataset", tracked=tracked)


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
