"""`train.distributed: ddp`: the train stage as `nproc_per_node` processes under torchrun.

The stage process validates params, takes the stage lock and starts `torchrun` with the same
stage command; every process it starts trains a DistributedDataParallel copy of the model on
its shard of each batch (gloo on the CPU, nccl on CUDA, one GPU a process). `train.batch_size`
stays the global batch: each of N processes takes its 1/N share, so a step sees the same
samples as in one process. Rank 0 alone writes checkpoints and outputs and logs to MLflow;
the others read the checkpoint to resume.
"""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline import cores
from pipeline.errors import PipelineError


def in_worker() -> bool:
    """Whether this process was started by torchrun (which sets these for every worker)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if in_worker() else 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if in_worker() else 1


def is_main() -> bool:
    return rank() == 0


def launch(experiment: str, params_file: str, nproc: int) -> None:
    """Run train@`experiment` as `nproc` torchrun workers on this machine; raise on failure.
    Each worker gets its share of the cores (torchrun would give each one thread)."""
    env = {**os.environ, **cores.for_children(nproc)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "--max-restarts=0"]
    cmd += ["-m", "pipeline.stages.train", experiment, "--params", params_file]
    print(f"train@{experiment}: torchrun with {nproc} processes", file=sys.stderr)
    code = subprocess.run(cmd, env=env, preexec_fn=die_with_parent).returncode
    if code != 0:
        raise PipelineError(
            f"the {nproc} torchrun processes of train@{experiment} exited with {code}; "
            "their own messages are above"
        )


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies. torchrun starts each worker in
    a session of its own, so a `kill -9` of the stage (or of `dvc repro` and its process
    group) would otherwise leave workers training on, beside the next run (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def setup(device):
    """Join the process group; returns this worker's device (its own GPU on CUDA)."""
    import torch
    import torch.distributed as dist

    die_with_parent()
    if os.getppid() == 1:  # the parent was already gone
        raise SystemExit("torchrun ended before this worker started")

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def wrap(model, device):
    """The DistributedDataParallel module the training steps call; its weights are `model`'s."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def mean_over_workers(row: dict[str, float]) -> dict[str, float]:
    """Each worker's epoch means (of its own shard) averaged into the epoch's means."""
    import torch
    import torch.distributed as dist

    values = torch.tensor(list(row.values()), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        values = values.cuda()
    dist.all_reduce(values)
    return dict(zip(row, (values / dist.get_world_size()).tolist(), strict=True))


def from_main(obj):
    """Rank 0's `obj` on every worker: decisions taken from it (the best epoch, early
    stopping) are then the same everywhere, and no worker waits on a collective alone."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
