"""One small class per task: how a model of that task takes a training step and is validated.

The epoch loop, checkpoints and early stopping live in the engine and are shared by all.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pipeline.config import GENERATIVE, VAL_METRICS, TrainParams
from pipeline.engine import Batches, predict
from pipeline.errors import PipelineError
from pipeline.supervised import SupervisedTask


def task_kind(model_name: str, schema: dict) -> str:
    """Generative families have their own objective; predictive ones learn the dataset's task."""
    return model_name if model_name in GENERATIVE else schema["task"]


def make_task(kind: str, cfg: TrainParams, schema: dict):
    if kind in GENERATIVE:
        from pipeline import generative

        if cfg.precision != "fp32":
            raise PipelineError(
                f"train.precision: {cfg.precision!r} is for supervised models (mlp, cnn, rnn, "
                f"pretrained); {kind} trains in fp32: set precision: fp32"
            )

        return generative.TASKS[kind](cfg, schema)
    known = {
        "classification": Classification,
        "forecasting": Forecasting,
        "regression": Forecasting,  # one value per sample: the same MSE objective
        "language_model": LanguageModel,
    }
    return known[kind](cfg, schema)


class Classification(SupervisedTask):
    val_metrics = VAL_METRICS["classification"]

    def __init__(self, cfg: TrainParams, schema: dict):
        super().__init__(cfg, schema)
        self.weight = None
        if cfg.class_weights == "balanced":
            counts = torch.tensor(schema["class_counts"]["train"], dtype=torch.float32)
            if (counts == 0).any():
                raise PipelineError("train.class_weights: a class has no training samples")
            self.weight = counts.sum() / (len(counts) * counts)

    def loss(self, model, xb, yb):
        weight = None if self.weight is None else self.weight.to(xb.device)
        return F.cross_entropy(
            model(xb), yb, weight=weight, label_smoothing=self.cfg.label_smoothing
        )

    def validate(self, model, batches: Batches) -> dict[str, float]:
        logits = predict(model, batches)
        loss = F.cross_entropy(logits, batches.y)
        accuracy = (logits.argmax(1) == batches.y).float().mean()
        loss, accuracy = torch.stack([loss, accuracy]).tolist()
        return {"val/loss": loss, "val/accuracy": accuracy}


class Forecasting(SupervisedTask):
    """Predict the next `horizon` values of a scaled series; loss is MSE."""

    val_metrics = VAL_METRICS["forecasting"]

    def loss(self, model, xb, yb):
        return F.mse_loss(model(xb), yb)

    def validate(self, model, batches: Batches) -> dict[str, float]:
        mse = F.mse_loss(predict(model, batches), batches.y).item()
        return {"val/loss": mse, "val/rmse": mse**0.5}


class LanguageModel(SupervisedTask):
    """Next-token prediction at every step; perplexity = exp(mean loss per token)."""

    val_metrics = VAL_METRICS["language_model"]

    def loss(self, model, xb, yb):
        return F.cross_entropy(model(xb).flatten(0, 1), yb.flatten())

    def validate(self, model, batches: Batches) -> dict[str, float]:
        logits = predict(model, batches)
        loss = F.cross_entropy(logits.flatten(0, 1), batches.y.flatten()).item()
        return {"val/loss": loss, "val/perplexity": float(torch.tensor(loss).exp())}
