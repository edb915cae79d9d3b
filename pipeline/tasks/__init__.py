"""Training by task kind: `make_task` gives the object whose `train_step` and `validate` the
engine's loop calls. The facts about each kind (metrics, baselines, families) are in
`pipeline.tasks.kinds`, which stays free of torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import PipelineError
from pipeline.tasks.kinds import GENERATIVE

if TYPE_CHECKING:
    from pipeline.params.training import TrainParams


def make_task(kind: str, cfg: TrainParams, schema: dict):
    from pipeline.tasks import generative, predictive

    if kind in GENERATIVE and cfg.precision != "fp32":
        raise PipelineError(
            f"train.precision: {cfg.precision!r} is for supervised models (mlp, cnn, rnn, "
            f"pretrained); {kind} trains in fp32: set precision: fp32"
        )
    return {**predictive.TRAINERS, **generative.TRAINERS}[kind](cfg, schema)
