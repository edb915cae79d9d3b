"""The predictive tasks: how a classifier, a forecaster or a language model takes a training
step and is validated. The epoch loop, checkpoints and early stopping are the engine's."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pipeline.engine import Batches, predict
from pipeline.errors import PipelineError
from pipeline.evaluation.attacks import perturb
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

        self.adversarial = None
        adv = cfg.adversarial_training
        if adv.epsilon:
            if len(schema["input_shape"]) != 3 or "normalization" not in schema:
                raise PipelineError(
                    "train.adversarial_training: needs an image classifier; this dataset's "
                    f"inputs are {tuple(schema['input_shape'])}: set epsilon to 0"
                )
            from pipeline.augment import ImageScale

            self.adversarial = ImageScale(schema["normalization"])
            self.generator = None  # PGD's random starts, seeded on the batches' device

    def loss(self, model, xb, yb):
        weight = None if self.weight is None else self.weight.to(xb.device)
        return F.cross_entropy(
            model(xb), yb, weight=weight, label_smoothing=self.cfg.label_smoothing
        )

    def train_step(self, model, xb, yb, optimizers):
        if self.adversarial is not None:
            xb = self._mix_adversarial(model, xb, yb)
        return super().train_step(model, xb, yb, optimizers)

    def _mix_adversarial(self, model, xb, yb):
        """The first `fraction` of the batch replaced by its PGD examples, crafted against
        the model as it is now (in eval mode: dropout and batch statistics stay out of the
        attack)."""
        adv = self.cfg.adversarial_training
        if self.generator is None:
            self.generator = torch.Generator(device=xb.device).manual_seed(0)
        n = max(1, round(adv.fraction * len(xb)))
        model.eval()
        crafted = perturb(
            model, xb[:n], yb[:n], self.adversarial, adv.epsilon, adv.steps, self.generator
        )
        model.train()
        return torch.cat([crafted, xb[n:]])

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


class Seq2Seq(SupervisedTask):
    """Teacher forcing: the decoder reads the target shifted right (BOS first) and predicts
    each next token; padding is left out of the loss. Validation also decodes greedily:
    exact match is what a user of the translations sees."""

    val_metrics = KINDS["seq2seq"].val_metrics

    def loss(self, model, xb, yb):
        logits = model(xb, yb[:, :-1])
        return F.cross_entropy(
            logits.flatten(0, 1),
            yb[:, 1:].flatten(),
            ignore_index=0,
            label_smoothing=self.cfg.label_smoothing,
        )

    @torch.no_grad()
    def validate(self, model, batches: Batches) -> dict[str, float]:
        model.eval()
        loss = tokens = exact = 0
        for xb, yb in batches:
            target = yb[:, 1:]
            logits = model(xb, yb[:, :-1])
            loss = loss + F.cross_entropy(
                logits.flatten(0, 1), target.flatten(), ignore_index=0, reduction="sum"
            )
            tokens = tokens + (target != 0).sum()
            exact = exact + (model(xb) == target).all(1).sum()
        loss, exact = (loss / tokens).item(), (exact / len(batches.y)).item()
        return {"val/loss": loss, "val/exact_match": exact}


TRAINERS = {
    "classification": Classification,
    "forecasting": Forecasting,
    "regression": Forecasting,  # one value per sample: the same MSE objective
    "language_model": LanguageModel,
    "seq2seq": Seq2Seq,
}
