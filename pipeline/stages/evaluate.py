"""evaluate@<experiment>: test-split metrics, per-class metrics, confusion matrix, curves."""

from __future__ import annotations

import csv
import io
import json
import sys

from pipeline import atomic, data, paths, plots, tracking
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.metrics import classification_metrics
from pipeline.stages import stage_main


def run(params: Params, experiment: str) -> dict[str, float]:
    import torch
    from torch import nn

    from models import DataSpec, build_model
    from pipeline import engine

    exp = params.experiments[experiment]
    model_path = paths.model_file(experiment)
    if not model_path.is_file():
        raise PipelineError(f"{model_path} not found; run `dvc repro train@{experiment}` first")
    saved = torch.load(model_path, map_location="cpu", weights_only=True)
    spec = DataSpec(tuple(saved["input_shape"]), saved["num_classes"])
    model_cfg = {k: v for k, v in saved["model"].items() if k != "name"}
    model = build_model(saved["model"]["name"], model_cfg, spec)
    model.load_state_dict(saved["state_dict"])
    device = engine.select_device(exp.device)
    model.to(device)

    schema = data.load_schema(exp.dataset)
    x, y = data.load_split(exp.dataset, "test")
    batches = engine.Batches(x, y, exp.evaluate.batch_size, device=device, shuffle=False)
    logits = engine.predict(model, batches)
    loss = nn.functional.cross_entropy(logits, batches.y).item()
    y_pred = logits.argmax(1).cpu().numpy()
    summary, per_class, confusion = classification_metrics(y, y_pred, schema["classes"])
    summary["test/loss"] = loss
    summary["test/samples"] = len(y)

    train_info = json.loads(paths.train_summary_file(experiment).read_text())
    history = list(csv.DictReader(paths.history_file(experiment).open()))
    history = [{k: float(v) for k, v in row.items()} for row in history]
    tags = {
        "stage": "evaluate",
        "experiment": experiment,
        "dataset": exp.dataset,
        "model": exp.model.name,
        "dvc.data_hash": tracking.dvc_data_hash(exp.dataset),
    }
    with tracking.stage_run(
        exp.tracking,
        name=f"{experiment}/evaluate",
        tags=tags,
        parent_run_id=train_info.get("mlflow_run_id"),
    ) as run:
        run.log_metrics(summary)
        run.log_dict(per_class, "per_class.json")
        confusion_fig = plots.confusion_figure(
            confusion, schema["classes"], f"{experiment}: test confusion matrix"
        )
        run.log_figure(confusion_fig, "confusion_matrix.png")
        plots.save(confusion_fig, paths.confusion_png(experiment))
        plots.save(plots.curves_figure(history, experiment), paths.curves_png(experiment))
        atomic.write_text(
            paths.confusion_csv(experiment), confusion_csv(y, y_pred, schema["classes"])
        )
        atomic.write_json(paths.per_class_file(experiment), per_class)
        atomic.write_json(
            paths.summary_file(experiment),
            {
                "experiment": experiment,
                "dataset": exp.dataset,
                "model": exp.model.name,
                "metrics": summary,
                "train": train_info,
                "evaluate_run_id": run.run_id,
                "data": {"dvc_hash": tags["dvc.data_hash"], "counts": schema["counts"]},
                "params": exp.model_dump(mode="json"),
            },
        )
        # written last: DVC treats metrics.json as the stage's result
        atomic.write_json(paths.metrics_file(experiment), summary)
    return summary


def confusion_csv(y_true, y_pred, classes: list[str]) -> str:
    """One row per test sample, the layout DVC's confusion template reads."""
    buf = io.StringIO()
    buf.write("actual,predicted\n")
    for t, p in zip(y_true, y_pred, strict=True):
        buf.write(f"{classes[t]},{classes[p]}\n")
    return buf.getvalue()


def main(argv=None) -> int:
    return stage_main("evaluate", run, argv, target="experiment")


if __name__ == "__main__":
    sys.exit(main())
