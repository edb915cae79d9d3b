"""A NaN loss stops training at that step, names it and keeps the last good checkpoint."""

from __future__ import annotations

import pytest
import torch

from pipeline import engine
from pipeline.errors import PipelineError
from pipeline.tasks.predictive import Classification
from tests.test_engine import SCHEMA, setup


class PoisonedAt(Classification):
    """Classification whose loss turns NaN at one global training step; counts the steps."""

    def __init__(self, cfg, step: int):
        super().__init__(cfg, SCHEMA)
        self.poison_step, self.steps = step, 0

    def train_step(self, model, xb, yb, optimizers):
        self.steps += 1
        losses = super().train_step(model, xb, yb, optimizers)
        if self.steps == self.poison_step:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses


def test_a_nan_loss_stops_within_one_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model, tr, va, cfg = setup()  # 180 samples in batches of 32: 6 steps an epoch
    task = PoisonedAt(cfg, step=6 + 4)  # epoch 2, step 4
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(
        PipelineError, match=r"diverged at epoch 2, step 4 of 6 \(loss=nan\).*checkpoint is kept"
    ):
        engine.fit(model, tr, va, cfg, task, checkpoint_path=checkpoint, run_key="k")
    assert task.steps == 10  # not one step more
    saved = engine.load_tensors(checkpoint)
    assert saved["state"]["epoch"] == 1 and not saved["finished"]
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_a_resumed_run_restores_python_and_numpy_random_state(tmp_path):
    import random

    import numpy as np

    from tests.test_engine import Crash, crash_after, fit

    model, tr, va, cfg = setup()
    fit(model, tr, va, cfg)
    expected = (random.random(), np.random.rand())

    checkpoint = tmp_path / "checkpoint.pt"
    model, tr, va, cfg = setup()
    with pytest.raises(Crash):
        fit(model, tr, va, cfg, checkpoint_path=checkpoint, run_key="k", on_epoch=crash_after(2))
    model, tr, va, cfg = setup(seed=123)  # a new process: other global draws in between
    random.seed(99)
    np.random.seed(99)
    fit(model, tr, va, cfg, checkpoint_path=checkpoint, run_key="k")
    assert (random.random(), np.random.rand()) == expected
