"""The engine's GPU path: bf16 autocast, channels_last, torch.compile, data resident on the
device, and the NaN flag that stops training at the right step without a host sync per step.

A small CNN learns a fixed labelling of random 3x16x16 images (by their quadrants' means), so
losses fall and runs can be compared. Stated tolerances: bf16 autocast's per-epoch train loss
within 5% of fp32's (bf16 keeps 8 bits of mantissa) and its validation accuracy within 0.05;
channels_last and compile are the same sums in another layout or fused, rounded in another
order: the first epoch's loss within 1% of fp32's, later epochs (where three epochs of
training amplify those roundings) within 3% (seen: 1.0% at the third epoch on CPU).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from models import DataSpec, build_model
from pipeline import engine
from pipeline.errors import PipelineError
from pipeline.params.training import TrainParams
from pipeline.tasks.predictive import Classification

pytestmark = pytest.mark.gpu

SHAPE = (3, 16, 16)


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPE, generator=g)
    # the label: a fixed linear map of each channel's quadrant means (what a CNN learns fast)
    w = torch.randn(3 * 2 * 2, 10, generator=g)
    return x, (torch.nn.functional.avg_pool2d(x, 8).flatten(1) @ w).argmax(1)


def setup(device, n: int = 2048, batch: int = 128, **train):
    engine.seed_everything(0)
    config = {"channels": [16, 32], "hidden_size": 64, "batch_norm": True}
    model = build_model("cnn", config, DataSpec(SHAPE, 10)).to(device)
    x, y = data(n)
    tr = engine.Batches(x, y, batch, device=device, shuffle=True, seed=0)
    va = engine.Batches(x[:512], y[:512], 256, device=device, shuffle=False)
    cfg = TrainParams.model_validate(
        {
            "epochs": 3,
            "early_stopping": {"patience": 0},
            "grad_clip": 1.0,
            "optimizer": {"lr": 0.003},
            **train,
        }
    )
    return model, tr, va, cfg, Classification(cfg, {"task": "classification"})


def fit(device, **train) -> engine.FitResult:
    model, tr, va, cfg, task = setup(device, **train)
    return engine.fit(model, tr, va, cfg, task, desc="gpu test")


def losses(result: engine.FitResult) -> list[float]:
    return [row["train/loss"] for row in result.history]


def assert_same_training(result: engine.FitResult, reference: engine.FitResult) -> None:
    """Per-epoch train losses of the same run in another layout or compiled (see above)."""
    ours, theirs = losses(result), losses(reference)
    assert ours[0] == pytest.approx(theirs[0], rel=0.01)
    assert ours == pytest.approx(theirs, rel=0.03)


@pytest.fixture
def fp32(device) -> engine.FitResult:
    result = fit(device)
    assert losses(result)[-1] < 0.8 * losses(result)[0]  # it learns
    return result


def test_bf16_autocast_trains_and_its_loss_matches_fp32(device, fp32):
    bf16 = fit(device, precision="bf16")
    assert losses(bf16) == pytest.approx(losses(fp32), rel=0.05)
    acc = [r["val/accuracy"] for r in (fp32.history[-1], bf16.history[-1])]
    assert abs(acc[0] - acc[1]) <= 0.05


def test_channels_last_keeps_the_layout_and_the_numbers(device, fp32):
    model, tr, va, cfg, task = setup(device, channels_last=True)
    result = engine.fit(model, tr, va, cfg, task, desc="gpu test")
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert tr.x.is_contiguous(memory_format=torch.channels_last)
    assert_same_training(result, fp32)


def test_compile_trains_to_the_eager_losses(device, fp32):
    compiled = fit(device, compile=True)
    assert_same_training(compiled, fp32)


def test_data_stays_on_the_device_in_the_cpu_order(device):
    x, y = data(300)
    on_device = engine.Batches(x, y, 64, device=device, shuffle=True, seed=3)
    on_cpu = engine.Batches(x, y, 64, device="cpu", shuffle=True, seed=3)
    assert on_device.x.device.type == device.type and on_device.y.device.type == device.type
    got = list(on_device)
    assert all(xb.device.type == device.type for xb, _ in got)
    # the order is drawn on the CPU from the same seed: the same batches on any device
    assert torch.equal(torch.cat([yb.cpu() for _, yb in got]), torch.cat([yb for _, yb in on_cpu]))


class NanAt(nn.Module):
    """A model whose training output turns NaN from its `step`-th forward call on (a counter
    on the host: no device read to decide)."""

    def __init__(self, model: nn.Module, step: int):
        super().__init__()
        self.model, self.step, self.calls = model, step, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.step:
                out = out * float("nan")
        return out


def test_a_nan_loss_stops_training_at_its_step(device):
    model, tr, va, cfg, task = setup(device, n=2048, batch=128)  # 16 steps an epoch
    with pytest.raises(PipelineError, match=r"diverged at epoch 1, step 7 of 16"):
        engine.fit(NanAt(model, 7), tr, va, cfg, task, desc="gpu test")


def syncs_in_one_epoch(device, steps: int) -> int:
    """Synchronizing CUDA calls (as torch's sync debug mode counts them) in one epoch of
    `steps` steps, its first-use costs paid by a warm-up epoch."""
    model, tr, _, _, task = setup(device, n=64 * steps, batch=64)
    optimizers = task.optimizers(model)
    engine.train_one_epoch(model, tr, task, optimizers, [])
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            engine.train_one_epoch(model, tr, task, optimizers, [])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def test_the_training_loop_does_not_sync_with_the_host_per_step(cuda):
    few, many = syncs_in_one_epoch(cuda, 10), syncs_in_one_epoch(cuda, 40)
    assert many == few, f"{few} syncs in 10 steps, {many} in 40: the loop waits per step"
