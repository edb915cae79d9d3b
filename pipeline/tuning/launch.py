"""How workers are started: the command line of one (`python -m pipeline.tuning.worker`) and
the environment that gives it a GPU of its own or its share of the CPU threads. Light (no
Optuna), so the Prefect flows' process builds worker commands without loading it."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from pipeline import cores


def command(experiment: str, worker: int, **options) -> list[str]:
    """The command line of one worker: `options` are this module's flags without the dashes
    (params, storage, study, deadline, wait, config, parent); None leaves a flag out. The tune
    stage and the Prefect flows start their workers with it."""
    cmd = [sys.executable, "-m", "pipeline.tuning.worker", "--experiment", experiment]
    cmd += ["--worker", str(worker)]
    for flag, value in options.items():
        if value is not None:
            cmd += [f"--{flag}", str(value)]
    return cmd


def worker_env(worker: int, workers: int, gpus: int, cpus: int) -> dict[str, str]:
    """Environment of local worker `worker`: a GPU of its own (round-robin when there are more
    workers than GPUs), or on CPU its share of the `cpus` threads."""
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": str(worker % gpus)}
    threads = str(max(1, cpus // workers))
    return {
        "CUDA_VISIBLE_DEVICES": "",
        **dict.fromkeys(cores.THREAD_VARS, threads),
        cores.SHARED: "",
    }


def worker_envs(workers: int) -> list[dict[str, str]]:
    """The environments of `workers` local workers started by this process: on CPU they split
    this process's own share of the cores."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [worker_env(i, workers, gpus, cores.own_threads()) for i in range(workers)]


def exit_with(parent: int) -> None:
    """End this worker (as SIGTERM does) once process `parent` is gone: a tune stage that is
    killed, even with SIGKILL, must not leave its local workers training on."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
