"""The predictive tasks: how a classifier, a forecaster or a language model takes a training
step and is validated. The epoch loop, checkpoints and early stopping are the engine's."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pipeline.engine import Batches, predict
from pipeline.errors import PipelineError
from pipeline.params.training import TrainParams
from pipeline.tasks.base import SupervisedTask
from pipeline.tasks.kinds import KINDS


class Classification(SupervisedTask):
    val_metrics = KINDS["classification"].val_metrics

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

    val_metrics = KINDS["forecasting"].val_metrics

    def loss(self, model, xb, yb):
        return F.mse_loss(model(xb), yb)

    def validate(self, model, batches: Batches) -> dict[str, float]:
        mse = F.mse_loss(predict(model, batches), batches.y).item()
        return {"val/loss": mse, "val/rmse": mse**0.5}


class LanguageModel(SupervisedTask):
    """Next-token prediction at every step; perplexity = exp(mean loss per token)."""

    val_metrics = KINDS["language_model"].val_metrics

    def loss(self, model, xb, yb):
        return F.cross_entropy(model(xb).flatten(0, 1), yb.flatten())

    def validate(self, model, batches: Batches) -> dict[str, float]:
        logits = predict(model, batches)
        loss = F.cross_entropy(logits.flatten(0, 1), batches.y.flatten()).item()
        return {"val/loss": loss, "val/perplexity": float(torch.tensor(loss).exp())}


TRAINERS = {
    "classification": Classification,
    "forecasting": Forecasting,
    "regression": Forecasting,  # one value per sample: the same MSE objective
    "language_model": LanguageModel,
}
