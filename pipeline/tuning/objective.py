"""One trial: its sampled params applied to the experiment, trained through the same engine
as train@, reported to the pruner each epoch, its objective values returned."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import optuna

from pipeline.config import ExperimentParams, apply_overrides, unflatten
from pipeline.errors import PipelineError
from pipeline.tasks.kinds import higher_is_better
from pipeline.tuning.search import sample, trial_epochs
from pipeline.tuning.studies import requeue


class Objective:
    """Trains one trial of `experiment`; returns the objective values (one per metric)."""

    def __init__(self, experiment: str, exp: ExperimentParams, parent_run_id: str | None):
        self.experiment = experiment
        self.exp = exp
        self.parent_run_id = parent_run_id
        self.metrics = exp.tune.metrics()
        self.directions = exp.tune.directions()
        self.on_claimed: Callable[[], None] = lambda: None

    def warm_up(self) -> None:
        """Import what a trial needs before claiming one, so a trial's time is training."""
        import pipeline.experiment  # noqa: F401  (torch, models, the engine)
        from pipeline.tracking import store

        if self.exp.train.augment:
            import torchvision.transforms.v2  # noqa: F401
        if self.parent_run_id:
            store.connect(self.exp.tracking, self.parent_run_id)

    def __call__(self, trial: optuna.Trial):
        self.on_claimed()  # the trial is RUNNING and counted: other workers may claim theirs
        trial.set_user_attr("worker_pid", os.getpid())
        try:
            return self._run(trial)
        except (KeyboardInterrupt, SystemExit):
            requeue(trial)
            raise SystemExit(130) from None  # Optuna lets SystemExit through untouched

    def _run(self, trial: optuna.Trial):
        from pipeline import engine
        from pipeline.experiment import prepare
        from pipeline.tracking import store

        tune = self.exp.tune
        values = sample(trial, tune, self.exp.model_dump(mode="json"))
        where = f"experiments.{self.experiment}.tune (trial {trial.number})"
        exp = apply_overrides(self.exp, unflatten(values), where)
        prep = prepare(exp, self.experiment)
        # where the trial trained: a worker's GPU is pinned by CUDA_VISIBLE_DEVICES (launch.py)
        trial.set_user_attr("device", str(prep.train.device))
        if prep.train.device.type == "cuda":
            trial.set_user_attr("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
        for metric in self.metrics:
            if metric.startswith("val/") and metric not in prep.task.val_metrics:
                raise PipelineError(
                    f"experiments.{self.experiment}.tune.metric: {metric!r} is not reported by "
                    f"this task; choose from {', '.join(prep.task.val_metrics)}"
                )
        child = None
        if self.parent_run_id:
            child = store.trial_run(
                exp.tracking,
                self.parent_run_id,
                name=f"{self.experiment}/trial-{trial.number}",
                tags={"stage": "tune", "experiment": self.experiment, "trial": trial.number},
                params=values,
            )
            trial.set_user_attr("mlflow_run_id", child.run_id)
        history: list[dict] = []
        single = len(self.metrics) == 1

        def on_epoch(epoch: int, row: dict) -> None:
            history.append(row)
            if child is not None:
                child.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            if single:
                trial.report(row[self.metrics[0]], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        cfg = exp.train.model_copy(update={"epochs": trial_epochs(self.exp)})
        state, result = "FAIL", None
        try:
            engine.fit(
                prep.model,
                prep.train,
                prep.val,
                cfg,
                prep.task,
                on_epoch=on_epoch,
                desc=f"{self.experiment} trial {trial.number}",
            )
            result = self._values(history, prep)
            state = "COMPLETE"
            return result
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            trial.set_user_attr("epochs", len(history))
            if history:  # the best epoch's value of every val metric, for trials.csv
                trial.set_user_attr("val_best", best_values(history))
            if child is not None:
                named = dict(zip(self.metrics, result, strict=True)) if result else None
                child.end(state, named)

    def _values(self, history: list[dict], prep) -> list[float]:
        out = []
        for metric, direction in zip(self.metrics, self.directions, strict=True):
            if metric == "parameters":
                out.append(float(sum(p.numel() for p in prep.model.parameters())))
            elif metric == "latency_ms":
                out.append(latency_ms(prep.model, prep.val))
            else:
                seen = [row[metric] for row in history]
                out.append(max(seen) if direction == "maximize" else min(seen))
        return out


def best_values(history: list[dict]) -> dict[str, float]:
    keys = [k for k in history[0] if k.startswith("val/")]
    pick = {k: max if higher_is_better(k) else min for k in keys}
    return {k: pick[k](row[k] for row in history) for k in keys}


def latency_ms(model, batches, batch_size: int = 64, repeats: int = 5) -> float:
    """Median milliseconds of one forward pass over `batch_size` validation samples."""
    import torch

    x = batches.x[:batch_size]
    model.eval()
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(repeats):
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]
