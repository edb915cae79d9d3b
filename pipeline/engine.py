"""The training engine: device choice, seeding, the epoch loop, checkpoints, early stopping.

The hot loop does no logging and no host syncs: the epoch's loss is summed on the device and
read once per epoch.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler

from pipeline import atomic, augment, cores, distributed
from pipeline.data.arrays import NpyRows
from pipeline.errors import PipelineError
from pipeline.params.training import OptimizerParams, SchedulerParams, TrainParams
from pipeline.progress import EpochProgress
from pipeline.tasks.kinds import higher_is_better


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


def set_deterministic(on: bool) -> None:
    """Deterministic kernels only (or not). cuBLAS reads its workspace setting when first
    used, so this runs before any model or batch reaches the GPU."""
    if not on and not torch.are_deterministic_algorithms_enabled():
        return  # already off; setting it imports torch._inductor (about a second)
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def check_deterministic(model: nn.Module, batches: Batches, task: Task, where: str) -> None:
    """One training step on a copy of the model with two samples, before any real work: an op
    without a deterministic implementation on this device fails here, not mid-run. The RNG
    state is restored, so the real run is unchanged."""
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    trial = copy.deepcopy(model)
    try:
        task.train_step(trial, batches.head(2), batches.y[:2], task.optimizers(trial))
    except RuntimeError as err:
        if "deterministic" not in str(err):
            raise
        first = str(err).strip().splitlines()[0]
        raise PipelineError(
            f"{where}: {first}; set it to false, or choose a model without that op on "
            f"{batches.device.type}"
        ) from None
    finally:
        torch.set_rng_state(rng)
        if cuda_rng:
            torch.cuda.set_rng_state_all(cuda_rng)


class Batches:
    """Mini-batches of a split, in a seeded order.

    In memory (x an array or tensor): sliced from tensors that already sit on the device;
    for data that fits this beats a DataLoader (no workers, no per-batch collation). Read
    from disk (x an `arrays.NpyRows`, a split larger than the memory budget): the same
    batches in the same order, read through a DataLoader (by `workers` processes, or by this
    one with 0) and copied to the device (pinned, non-blocking on CUDA), so the two give
    identical results for one seed.
    """

    def __init__(
        self,
        x,
        y,
        batch_size: int,
        *,
        device,
        shuffle: bool,
        seed: int = 0,
        weights=None,
        transform=None,
        shard: tuple[int, int] = (0, 1),
        workers: int = 0,
    ):
        self.device = torch.device(device)
        self.streamed = isinstance(x, NpyRows)  # rows read from disk as needed
        self.x = x if self.streamed else torch.as_tensor(x).to(device)
        self.y = torch.as_tensor(y).to(device)
        self.input_shape = tuple(x.shape[1:])
        self.workers = workers
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        # per-sample draw weights: each epoch draws len(y) samples with replacement
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float)
        # applied to each yielded input batch (augmentation), with a seed per batch drawn
        # from `generator`: the same draws in memory and from disk, in any process
        self.transform = transform
        # (rank, world) of DistributedDataParallel: every worker draws the same epoch order and
        # takes every world-th sample of it, in batches of its share of `batch_size`, so step k
        # of all workers together covers the samples of step k in one process
        self.rank, self.world = shard
        self.batch_size = -(-batch_size // self.world)
        self.samples = -(-len(self.y) // self.world)  # per worker and epoch

    def __len__(self) -> int:
        return -(-self.samples // self.batch_size)

    def head(self, n: int) -> torch.Tensor:
        """The first `n` inputs, on the device (figures, a trial step)."""
        if self.streamed:
            return torch.from_numpy(self.x.rows(0, n)).to(self.device)
        return self.x[:n]

    def _order(self) -> tuple[torch.Tensor, int]:
        """This epoch's sample order (this worker's part of it) and its length."""
        n = len(self.y)
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=self.generator)
        elif self.shuffle:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        if self.world > 1:  # padded with the first samples, so all take the same steps
            order = torch.cat([order, order[: self.samples * self.world - n]])
            order, n = order[self.rank :: self.world], self.samples
        return order, n

    def _seeds(self, steps: int) -> list[int | None]:
        """A seed per batch of this epoch for its augmentation (none without one), drawn
        after the order; every DDP worker draws the same and adds its rank."""
        if self.transform is None:
            return [None] * steps
        seeds = torch.randint(0, 2**62, (steps,), generator=self.generator)
        return (seeds + self.rank).tolist()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, n = self._order()
        seeds = self._seeds(len(range(0, n, self.batch_size)))
        if self.streamed:
            yield from self._read(order, n, seeds)
            return
        order = order.to(self.device)
        for start, seed in zip(range(0, n, self.batch_size), seeds, strict=True):
            idx = order[start : start + self.batch_size]
            yield augment.seeded(self.transform, self.x[idx], seed), self.y[idx]

    def _read(
        self, order: torch.Tensor, n: int, seeds: list[int | None]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches read from disk, and augmented on the CPU where they are read (by
        DataLoader workers when there are any), before the copy to the device."""
        from torch.utils.data import DataLoader

        steps = [order[start : start + self.batch_size] for start in range(0, n, self.batch_size)]
        cuda = self.device.type == "cuda"
        loader = DataLoader(
            _Rows(self.x, self.transform),
            # one item = one batch's indices and seed: the workers read whole batches
            sampler=list(zip(steps, seeds, strict=True)),
            batch_size=None,
            num_workers=self.workers,
            pin_memory=cuda,
            prefetch_factor=2 if self.workers else None,  # batches read ahead per worker
            worker_init_fn=_one_thread,
            # the loader's seed drawn from its own generator, not torch's global one: the
            # global sequence (dropout, noise) stays that of the in-memory path
            generator=torch.Generator().manual_seed(0),
        )
        for idx, xb in zip(steps, loader, strict=True):
            yield xb.to(self.device, non_blocking=cuda), self.y[idx.to(self.y.device)]


class _Rows(torch.utils.data.Dataset):
    """The batch at a list of indices, read from disk and augmented with its seed (in a
    DataLoader worker)."""

    def __init__(self, rows, transform=None):
        self.rows, self.transform = rows, transform

    def __getitem__(self, item: tuple[torch.Tensor, int | None]) -> torch.Tensor:
        index, seed = item
        return augment.seeded(self.transform, torch.from_numpy(self.rows.take(index.numpy())), seed)


def _one_thread(_worker: int) -> None:
    """A loader worker reads files: a torch thread pool of its own would take cores from the
    training process."""
    torch.set_num_threads(1)


class Task(Protocol):
    """How one kind of model learns; pipeline/tasks/ has one per task kind. The loop is shared."""

    val_metrics: tuple[str, ...]

    def optimizers(self, model: nn.Module) -> dict[str, torch.optim.Optimizer]: ...

    def train_step(self, model, xb, yb, optimizers) -> dict[str, torch.Tensor]: ...

    def validate(self, model, batches: Batches) -> dict[str, float]: ...


def build_optimizer(parameters, cfg: OptimizerParams, lr: float | None = None):
    lr = cfg.lr if lr is None else lr
    wd = cfg.weight_decay
    if cfg.name == "sgd":
        return torch.optim.SGD(
            parameters, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd
        )
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    betas = (cfg.beta1, 0.999)
    if cfg.name == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=betas, weight_decay=wd)
    return torch.optim.AdamW(parameters, lr=lr, betas=betas, weight_decay=wd)


def build_scheduler(optimizer, cfg: SchedulerParams, epochs: int, mode: str, steps_per_epoch: int):
    """An LR schedule; `onecycle` steps per batch, the others per epoch (after warmup)."""
    sched = torch.optim.lr_scheduler
    if cfg.name == "onecycle":
        lr = optimizer.param_groups[0]["lr"]
        return sched.OneCycleLR(
            optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
        )
    if cfg.name == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.gamma, patience=cfg.patience
        )
    main = None
    if cfg.name == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(epochs - cfg.warmup_epochs, 1))
    elif cfg.name == "step":
        main = sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.warmup_epochs == 0:
        return main
    warmup = sched.LinearLR(optimizer, start_factor=0.1, total_iters=cfg.warmup_epochs)
    if main is None:
        return warmup
    return sched.SequentialLR(optimizer, [warmup, main], milestones=[cfg.warmup_epochs])


def optimizer_step(loss, optimizer, parameters, grad_clip: float | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()


def train_one_epoch(
    model, batches: Batches, task: Task, optimizers, step_schedulers, epoch: int = 1
) -> dict:
    """One pass over `batches`; returns mean `train/<loss>` values. Stops at the first step
    whose loss is NaN or infinite (see EpochLosses)."""
    model.train()
    losses = EpochLosses(batches.device, epoch, len(batches))
    for step, (xb, yb) in enumerate(batches, 1):
        losses.add(task.train_step(model, xb, yb, optimizers), len(xb), step)
        for scheduler in step_schedulers:
            scheduler.step()
    return {f"train/{key}": value for key, value in losses.means(batches.samples).items()}


class EpochLosses:
    """Sums an epoch's per-batch losses and raises at the first step whose losses are not all
    finite, naming it.

    On CPU each loss is read as a Python float at once: nothing to wait for, and cheaper than
    tensor arithmetic (a tiny model's step takes ~0.5 ms). On CUDA the sums stay on the device
    and a finite flag per step is copied to pinned host memory without blocking, read once the
    copy has landed (usually by the next step), so the loop never waits for the GPU."""

    def __init__(self, device: torch.device, epoch: int, steps: int):
        self.cuda = device.type == "cuda"
        self.epoch, self.steps = epoch, steps
        self.sums: dict = {}
        if self.cuda:
            self.flags = torch.ones(steps, dtype=torch.bool, pin_memory=True)
            self.pending: list[tuple[int, torch.cuda.Event]] = []

    def add(self, losses: dict[str, torch.Tensor], n: int, step: int) -> None:
        if not self.cuda:
            values = {key: loss.item() for key, loss in losses.items()}
            for key, value in values.items():
                self.sums[key] = self.sums.get(key, 0.0) + value * n
            if not all(math.isfinite(v) for v in values.values()):
                self._fail(step, values)
            return
        for key, loss in losses.items():
            self.sums[key] = self.sums.get(key, 0) + loss * n
        finite = torch.stack([torch.isfinite(v) for v in losses.values()]).all()
        self.flags[step - 1].copy_(finite, non_blocking=True)
        landed = torch.cuda.Event()
        landed.record()
        self.pending.append((step, landed))
        while self.pending and self.pending[0][1].query():
            self._check(self.pending.pop(0)[0])

    def means(self, samples: int) -> dict[str, float]:
        """The epoch's mean losses (waits for the last steps' flags on CUDA)."""
        if self.cuda:
            for step, landed in self.pending:
                landed.synchronize()
                self._check(step)
            self.pending.clear()
            values = (torch.stack(list(self.sums.values())) / samples).tolist()
            return dict(zip(self.sums, values, strict=True))
        return {key: total / samples for key, total in self.sums.items()}

    def _check(self, step: int) -> None:
        if not self.flags[step - 1]:
            self._fail(step, {})

    def _fail(self, step: int, values: dict) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise PipelineError(
            f"training diverged at epoch {self.epoch}, step {step} of {self.steps}"
            + (f" ({shown})" if shown else "")
            + "; the last good checkpoint is kept. Lower train.optimizer.lr or set "
            "train.grad_clip"
        )


@torch.no_grad()
def predict(model: nn.Module, batches: Batches) -> torch.Tensor:
    """Model outputs for every sample, in order."""
    model.eval()
    return torch.cat([model(xb) for xb, _ in batches])


def monitor_mode(metric: str) -> str:
    """Whether a bigger value of `metric` is better."""
    return "max" if higher_is_better(metric) else "min"


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("nan")
    kept_epoch: int = 0  # whose weights the model ends with: the best, or the last epoch's
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    samples_per_second: float = 0.0
    threads: int = 0  # torch's CPU threads in the last epoch (the process's share of the cores)


def load_tensors(path: Path) -> dict:
    """`torch.load` of plain tensors and containers only (`weights_only=True`): unpickling
    never runs code. A file holding anything else, e.g. a tampered checkpoint, is refused."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise PipelineError(
            f"{path}: refused: it holds more than tensors ({first}); "
            "delete it if this project did not write it"
        ) from None


def save_tensors(path: Path, obj: dict) -> None:
    """`torch.save` of `obj` to `path`, atomically and byte for byte the same for the same
    tensors: torch names the entries inside its zip file after the file written to, so it
    writes to memory first rather than to a temporary file with a random name."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic.atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


def config_key(config: dict) -> str:
    """A stable fingerprint of a resolved config: a checkpoint only resumes the same run."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def fit(
    model: nn.Module,
    train: Batches,
    val: Batches,
    cfg: TrainParams,
    task: Task,
    *,
    checkpoint_path: Path | None = None,
    run_key: str = "",
    on_epoch: Callable[[int, dict], None] | None = None,
    desc: str = "train",
) -> FitResult:
    """Train with early stopping on `cfg.early_stopping.metric`; leaves the best weights loaded.

    With `checkpoint_path`, state is saved every `cfg.checkpoint_interval` seconds (at an
    epoch's end) and after the last epoch, and a matching unfinished checkpoint (same
    `run_key`) is resumed.
    """
    metric = cfg.early_stopping.metric
    if metric not in task.val_metrics:
        raise PipelineError(
            f"train.early_stopping.metric: {metric!r} is not reported by this task; "
            f"choose from {', '.join(task.val_metrics)}"
        )
    mode = monitor_mode(metric)
    ddp, main = train.world > 1, train.rank == 0  # DistributedDataParallel workers
    runner = accelerate(model, train, val, cfg, ddp)
    optimizers = task.optimizers(model)
    schedulers = {
        name: build_scheduler(opt, cfg.scheduler, cfg.epochs, mode, len(train))
        for name, opt in optimizers.items()
    }
    schedulers = {name: s for name, s in schedulers.items() if s is not None}
    per_step = [s for s in schedulers.values() if isinstance(s, lr_scheduler.OneCycleLR)]
    per_epoch = [s for s in schedulers.values() if s not in per_step]
    state = {"epoch": 0, "history": [], "best_score": None, "best_epoch": 0, "bad_epochs": 0}
    best_weights = _cpu_copy(model.state_dict())
    result = FitResult()
    resumed = _resume(checkpoint_path, run_key, model, optimizers, schedulers, train)
    if resumed is not None:
        best_weights, state = resumed
        result.resumed_from_epoch = state["epoch"]
        if main:
            _say_resumed(desc, checkpoint_path, state["epoch"], cfg.epochs)

    start = saved_at = time.perf_counter()
    progress = EpochProgress(desc, state["epoch"], cfg.epochs, metric, enabled=main)
    for epoch in range(state["epoch"], cfg.epochs):
        result.threads = cores.rebalance()  # another stage may have started or ended
        row = {"epoch": epoch + 1}
        losses = train_one_epoch(runner, train, task, optimizers, per_step, epoch + 1)
        if ddp:  # rank 0 validates; every worker takes the same decisions from its numbers
            row.update(distributed.mean_over_workers(losses))
            row.update(distributed.from_main(task.validate(model, val) if main else None))
        else:
            row.update(losses)
            row.update(task.validate(runner, val))
        row["lr"] = next(iter(optimizers.values())).param_groups[0]["lr"]
        state["history"].append(row)
        if _improved(state, row[metric], mode, epoch + 1):
            best_weights = _cpu_copy(model.state_dict())
        _step_per_epoch(per_epoch, row[metric])
        stop = 0 < cfg.early_stopping.patience <= state["bad_epochs"]
        finished = stop or epoch + 1 == cfg.epochs
        due = time.perf_counter() - saved_at >= cfg.checkpoint_interval
        if checkpoint_path is not None and main and (finished or due):
            _save_checkpoint(
                checkpoint_path,
                model,
                optimizers,
                schedulers,
                train,
                best_weights,
                state,
                run_key,
                finished=finished,
            )
            saved_at = time.perf_counter()
        progress.update(epoch + 1, row, last=finished)
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
        if stop:
            result.stopped_early = True
            break

    result.seconds = time.perf_counter() - start
    epochs_run = state["epoch"] - result.resumed_from_epoch
    result.samples_per_second = epochs_run * len(train.y) / max(result.seconds, 1e-9)
    if cfg.early_stopping.restore_best:
        model.load_state_dict(best_weights)
    result.history = state["history"]
    result.best_epoch = state["best_epoch"]
    result.best_score = state["best_score"]
    result.kept_epoch = state["best_epoch"] if cfg.early_stopping.restore_best else state["epoch"]
    progress.finish(_fit_summary(result, state["epoch"], cfg, metric))
    return result


def _fit_summary(result: FitResult, epoch: int, cfg: TrainParams, metric: str) -> str:
    """How training ended, in one line (a bar that early stopping left short says nothing)."""
    if result.stopped_early:
        ended = (
            f"stopped early at epoch {epoch} of {cfg.epochs} ({metric} did not improve "
            f"for {cfg.early_stopping.patience} epochs)"
        )
    else:
        ended = f"trained {epoch} of {cfg.epochs} epochs"
    best = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    return (
        f"{ended}; best {metric} {best} at epoch {result.best_epoch}, model weights of "
        f"epoch {result.kept_epoch}; {result.seconds:.1f} s"
    )


def _improved(state: dict, score: float, mode: str, epoch: int) -> bool:
    """Record `epoch`'s score in the early-stopping state; whether it is the best so far."""
    state["epoch"] = epoch
    best = state["best_score"]
    if best is None or (score < best if mode == "min" else score > best):
        state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
        return True
    state["bad_epochs"] += 1
    return False


def _step_per_epoch(schedulers: list, score: float) -> None:
    for sched in schedulers:
        if isinstance(sched, lr_scheduler.ReduceLROnPlateau):
            sched.step(score)
        else:
            sched.step()


def _resume(checkpoint_path, run_key, model, optimizers, schedulers, train):
    """Load an unfinished checkpoint of the same run into the model, optimizers, schedulers
    and random generators; its best weights and loop state, or None when there is none."""
    if checkpoint_path is None or not checkpoint_path.is_file():
        return None
    ckpt = load_tensors(checkpoint_path)
    if ckpt.get("run_key") != run_key or ckpt.get("finished"):
        return None
    model.load_state_dict(ckpt["model"])
    for name, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][name])
    for name, sched in schedulers.items():
        sched.load_state_dict(ckpt["schedulers"][name])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if torch.cuda.is_available() and ckpt["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    train.generator.set_state(ckpt["rng"]["shuffle"])
    _set_host_rng(ckpt["rng"]["host"])
    return ckpt["best_weights"], ckpt["state"]


def _say_resumed(desc: str, checkpoint_path: Path, epoch: int, epochs: int) -> None:
    saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(checkpoint_path.stat().st_mtime))
    print(f"{desc}: resumed from epoch {epoch} of {epochs} (checkpoint {saved})", flush=True)


def accelerate(
    model: nn.Module, train: Batches, val: Batches, cfg: TrainParams, ddp: bool = False
) -> nn.Module:
    """Apply `train.channels_last` (to the model and, once, to the data already on the
    device), DistributedDataParallel and `train.compile`; returns the module the training
    steps call. Weights are shared, so checkpoints and the saved model come from `model`."""
    if cfg.channels_last:
        if len(train.input_shape) != 3:
            raise PipelineError(
                "train.channels_last: needs image inputs (N, C, H, W); these are "
                f"{train.input_shape}: set it to false"
            )
        model.to(memory_format=torch.channels_last)
        for batches in (train, val):
            if not batches.streamed:  # batches read from disk are converted by the model
                batches.x = batches.x.contiguous(memory_format=torch.channels_last)
    runner = distributed.wrap(model, train.device) if ddp else model
    return torch.compile(runner) if cfg.compile else runner


def _cpu_copy(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def _host_rng() -> dict:
    """Python's and NumPy's global RNG states in types `torch.load(weights_only=True)` reads
    back (no NumPy arrays)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": numpy_state["state"]["pos"],
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        },
    }


def _set_host_rng(saved: dict) -> None:
    py = saved["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    np_saved = saved["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_saved["key"].numpy().astype(np.uint32),
            np_saved["pos"],
            np_saved["has_gauss"],
            np_saved["gauss"],
        )
    )


def _save_checkpoint(
    path, model, optimizers, schedulers, train, best_weights, state, run_key, finished
):
    ckpt = {
        "run_key": run_key,
        "finished": finished,
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "schedulers": {name: sched.state_dict() for name, sched in schedulers.items()},
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle": train.generator.get_state(),
            "host": _host_rng(),
        },
        "best_weights": best_weights,
        "state": state,
    }
    save_tensors(path, ckpt)
