"""The training engine: device choice, seeding, the epoch loop, checkpoints, early stopping.

The hot loop does no logging and no host syncs: the epoch's loss is summed on the device and
read once per epoch.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import atomic
from pipeline.config import OptimizerParams, SchedulerParams, TrainParams
from pipeline.errors import PipelineError


def select_device(preference: str) -> torch.device:
    """`auto`: CUDA when present, else CPU."""
    cuda = torch.cuda.is_available()
    if preference == "cuda" and not cuda:
        raise PipelineError(
            "device: 'cuda' was asked for but no CUDA device is visible; use auto or cpu"
        )
    return torch.device("cuda" if cuda and preference in ("auto", "cuda") else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Batches:
    """Mini-batches sliced from tensors that already sit on the device.

    For data that fits in memory this beats a DataLoader: no workers, no per-batch collation.
    """

    def __init__(self, x, y, batch_size: int, *, device, shuffle: bool, seed: int = 0):
        self.x = torch.as_tensor(x).to(device)
        self.y = torch.as_tensor(y).to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]


def build_optimizer(model: nn.Module, cfg: OptimizerParams) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer, cfg: SchedulerParams, epochs: int, mode: str):
    sched = torch.optim.lr_scheduler
    if cfg.name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=epochs)
    if cfg.name == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.gamma, patience=cfg.patience
        )
    return None


def train_one_epoch(model, batches: Batches, optimizer, loss_fn, grad_clip: float | None) -> float:
    """One pass over `batches`; returns the mean training loss (one host sync)."""
    model.train()
    total = torch.zeros((), device=batches.x.device)
    for xb, yb in batches:
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += loss.detach() * len(yb)
    return (total / len(batches.y)).item()


@torch.no_grad()
def predict(model: nn.Module, batches: Batches) -> torch.Tensor:
    """Logits for every sample, in order."""
    model.eval()
    return torch.cat([model(xb) for xb, _ in batches])


def evaluate_split(model: nn.Module, batches: Batches, loss_fn) -> dict[str, float]:
    logits = predict(model, batches)
    loss = loss_fn(logits, batches.y)
    accuracy = (logits.argmax(1) == batches.y).float().mean()
    return {"loss": loss.item(), "accuracy": accuracy.item()}


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("nan")
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    samples_per_second: float = 0.0


def config_key(config: dict) -> str:
    """A stable fingerprint of a resolved config: a checkpoint only resumes the same run."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def fit(
    model: nn.Module,
    train: Batches,
    val: Batches,
    cfg: TrainParams,
    *,
    checkpoint_path: Path | None = None,
    run_key: str = "",
    on_epoch: Callable[[int, dict], None] | None = None,
    desc: str = "train",
) -> FitResult:
    """Train with early stopping on `cfg.early_stopping.metric`; leaves the best weights loaded.

    With `checkpoint_path`, state is saved after every epoch and a matching unfinished
    checkpoint (same `run_key`) is resumed.
    """
    from tqdm.auto import tqdm

    metric = cfg.early_stopping.metric
    mode = "min" if metric.endswith("loss") else "max"
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    plain_loss = nn.CrossEntropyLoss()
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.epochs, mode)
    state = {"epoch": 0, "history": [], "best_score": None, "best_epoch": 0, "bad_epochs": 0}
    best_weights = _cpu_copy(model.state_dict())
    result = FitResult()

    if checkpoint_path is not None and checkpoint_path.is_file():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if ckpt.get("run_key") == run_key and not ckpt.get("finished"):
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if torch.cuda.is_available() and ckpt["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
            train.generator.set_state(ckpt["rng"]["shuffle"])
            best_weights = ckpt["best_weights"]
            state = ckpt["state"]
            result.resumed_from_epoch = state["epoch"]

    start = time.perf_counter()
    bar = tqdm(
        range(state["epoch"], cfg.epochs),
        desc=desc,
        unit="epoch",
        initial=state["epoch"],
        total=cfg.epochs,
        disable=not sys.stderr.isatty(),
    )
    for epoch in bar:
        train_loss = train_one_epoch(model, train, optimizer, loss_fn, cfg.grad_clip)
        if not np.isfinite(train_loss):
            raise PipelineError(
                f"training diverged: train loss is {train_loss} at epoch {epoch + 1}; "
                "lower train.optimizer.lr or set train.grad_clip"
            )
        val_metrics = evaluate_split(model, val, plain_loss)
        row = {
            "epoch": epoch + 1,
            "train/loss": train_loss,
            "val/loss": val_metrics["loss"],
            "val/accuracy": val_metrics["accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
        }
        state["history"].append(row)
        score = row[metric]
        best = state["best_score"]
        if best is None or (score < best if mode == "min" else score > best):
            state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
            best_weights = _cpu_copy(model.state_dict())
        else:
            state["bad_epochs"] += 1
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(score)
        elif scheduler is not None:
            scheduler.step()
        state["epoch"] = epoch + 1
        stop = 0 < cfg.early_stopping.patience <= state["bad_epochs"]
        if checkpoint_path is not None:
            _save_checkpoint(
                checkpoint_path,
                model,
                optimizer,
                scheduler,
                train,
                best_weights,
                state,
                run_key,
                finished=stop or epoch + 1 == cfg.epochs,
            )
        bar.set_postfix({"loss": f"{train_loss:.4f}", metric: f"{score:.4f}"})
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
        if stop:
            result.stopped_early = True
            break

    result.seconds = time.perf_counter() - start
    epochs_run = state["epoch"] - result.resumed_from_epoch
    result.samples_per_second = epochs_run * len(train.y) / max(result.seconds, 1e-9)
    model.load_state_dict(best_weights)
    result.history = state["history"]
    result.best_epoch = state["best_epoch"]
    result.best_score = state["best_score"]
    return result


def _cpu_copy(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def _save_checkpoint(
    path, model, optimizer, scheduler, train, best_weights, state, run_key, finished
):
    ckpt = {
        "run_key": run_key,
        "finished": finished,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle": train.generator.get_state(),
        },
        "best_weights": best_weights,
        "state": state,
    }
    with atomic.atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
