"""Each pipeline process's share of the CPU cores.

Two torch processes that each run one OpenMP thread per core on the same machine do not share
the cores, they fight for them: the threads spin while waiting for each other, and both slow
down many times over. So every pipeline process uses its share of the cores instead:

- a process started with `OMP_NUM_THREADS` set (by the user, or by the pipeline for its tune
  and DDP workers) uses that many threads, as torch and the BLAS libraries do by default;
- otherwise the process registers itself in a folder shared by this user's pipeline processes
  on this machine and takes `cores // live registered processes` threads. The training loop
  asks again after every epoch (`rebalance`), so a stage that started alone gives up cores
  when a second one starts beside it, and takes them back when that one ends.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# set beside them by a registered process: its children inherit a share, not a fixed count
SHARED = "PIPELINE_CORES_SHARED"
# one folder per user and machine: a file per live process, named by its pid
REGISTRY = Path(tempfile.gettempdir()) / f"dl-pipeline-{os.getuid()}-processes"

_dynamic = False  # True once this process registered and follows its share


def available() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's limit)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def join() -> int:
    """Take this process's share of the cores before torch or NumPy start their thread pools
    (they read the variables set here once, when first imported); returns the thread count."""
    global _dynamic
    fixed = _omp_threads()
    if fixed and not os.environ.get(SHARED):
        return fixed
    REGISTRY.mkdir(parents=True, exist_ok=True)
    entry = REGISTRY / str(os.getpid())
    entry.touch()
    atexit.register(entry.unlink, missing_ok=True)
    _dynamic = True
    threads = share()
    os.environ.update(dict.fromkeys(THREAD_VARS, str(threads)), **{SHARED: "1"})
    return threads


def share() -> int:
    """cores // the registered processes that are alive (the files of dead ones are removed)."""
    live = 0
    for entry in REGISTRY.glob("[0-9]*"):
        if alive(int(entry.name)):
            live += 1
        else:
            entry.unlink(missing_ok=True)
    return max(1, available() // max(1, live))


def rebalance() -> int:
    """In a registered process, set torch's threads to the share as it is now; returns the
    thread count torch uses. Costs a folder listing: done once per epoch."""
    import torch

    if _dynamic:
        threads = share()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
    return torch.get_num_threads()


def for_children(children: int) -> dict[str, str]:
    """The environment that gives each of `children` CPU processes this one starts (tune
    workers, DDP workers) a fixed part of this process's own threads."""
    return {**dict.fromkeys(THREAD_VARS, str(max(1, own_threads() // children))), SHARED: ""}


def own_threads() -> int:
    """The threads this process may use: its `OMP_NUM_THREADS`, else every available core."""
    return _omp_threads() or available()


def _omp_threads() -> int | None:
    """`OMP_NUM_THREADS` as a count (its first level: OpenMP also takes "4,2"), or None."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return max(1, int(first)) if first.isdigit() else None


def alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (by `kill(pid, 0)`)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user reusing the pid
        return True
    return True
