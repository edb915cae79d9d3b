"""The DVC pipeline with independent stages at once: `python -m pipeline run -j N` and the
Prefect `pipeline_flow` (flows.py) share this code.

DVC stays in charge: it decides which stages are stale, runs each stage's command, and
writes its entry in dvc.lock (each stage is `dvc repro --single-item`, run in this process by
flows.run_stage), so a parallel run ends with what a sequential `dvc repro` writes. DVC
releases its repository lock while a stage's command runs and takes it again to record the
result, which is what lets several commands run at once.

What this module adds is the order: a stage is handed to Prefect's thread-pool task runner
(its size is the run's slot count, `-j`) once every stage it depends on has succeeded, and,
on a machine with GPUs, once a GPU slot is free. A failed stage stops its descendants; the
other branches finish. Each stage process gets a fixed share of the CPU cores (cores // N
torch threads), so N stages at once never oversubscribe the cores (stage_env says why fixed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import cores, paths
from pipeline.stages import LOG_FILE

# stages that run models and so use a GPU when one is visible (evaluate runs the test split
# through the model); the others get none, so that they never take GPU memory
GPU_STAGES = ("judge", "tune", "train", "evaluate")
LOGS = paths.ARTIFACTS / "logs"  # <stage>.log of the last parallel run of each stage


def stage_order(root: str | Path = ".", targets: list[str] | None = None) -> list[str]:
    """Stage names of dvc.yaml (e.g. `train@cnn_digits`), dependencies first; with `targets`,
    only those stages and what they depend on."""
    return list(stage_graph(root, targets))


def stage_graph(root: str | Path = ".", targets: list[str] | None = None) -> dict[str, list[str]]:
    """stage -> the stages it depends on, for every stage of dvc.yaml (or `targets` and what
    they depend on), dependencies first."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        stages = {s.name: s for s in graph.nodes}
        keep = set(stages)
        if targets:
            unknown = sorted(set(targets) - keep)
            if unknown:
                raise ValueError(f"targets: unknown stages {unknown}; dvc.yaml has {sorted(keep)}")
            keep = set()
            for name in targets:
                keep |= {s.name for s in nx.descendants(graph, stages[name])} | {name}
        order = [s for s in reversed(list(nx.topological_sort(graph))) if s.name in keep]
        upstream = {s.name: sorted(d.name for d in graph.successors(s)) for s in order}
    return {name: [u for u in deps if u in keep] for name, deps in upstream.items()}


def stale(root: str | Path, stages: list[str]) -> list[str]:
    """The stages DVC finds changed now (what `dvc status` lists), in this process. A stage
    downstream of one of them is not listed until that one has run."""
    from dvc.repo import Repo

    wanted = set(stages)
    with Repo(str(root)) as repo, repo.lock:  # as `dvc status` holds it
        return [s.name for s in repo.index.stages if s.name in wanted and s.changed()]


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES's ids when set, else one id per
    device the NVIDIA driver lists (none without a driver). No torch import: it costs seconds."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    driver = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(driver.iterdir())))] if driver.is_dir() else []


def default_jobs(gpus: list[str]) -> int:
    """One stage per GPU on a GPU machine; otherwise one per core, and at least 2: much of a
    small stage's time is single-threaded start-up (imports, store set-up) that a second
    stage overlaps. benchmarks/parallel_bench.py measured -j 2 on 2 cores (0.80x of `dvc
    repro`); no other value was measured."""
    return len(gpus) if gpus else max(2, cores.available())


@dataclass
class Slots:
    """What a parallel run may use at once: `jobs` stages; on a GPU machine, each GPU stage
    `gpus_per_stage` GPUs, and up to `stages_per_gpu` stages sharing one group of GPUs."""

    jobs: int
    gpus: list[str] = field(default_factory=list)
    gpus_per_stage: int = 1
    stages_per_gpu: int = 1

    def __post_init__(self):
        if self.jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {self.jobs}")
        if self.gpus and not 1 <= self.gpus_per_stage <= len(self.gpus):
            raise ValueError(
                f"gpus_per_stage must be between 1 and the {len(self.gpus)} GPU(s) visible, "
                f"got {self.gpus_per_stage}"
            )
        if self.stages_per_gpu < 1:
            raise ValueError(f"stages_per_gpu must be at least 1, got {self.stages_per_gpu}")

    def gpu_groups(self) -> list[str]:
        """One CUDA_VISIBLE_DEVICES value per GPU slot: the GPUs split into groups of
        `gpus_per_stage`, each group offered `stages_per_gpu` times."""
        n = self.gpus_per_stage
        groups = [",".join(self.gpus[i : i + n]) for i in range(0, len(self.gpus) - n + 1, n)]
        return [g for _ in range(self.stages_per_gpu) for g in groups]


def uses_gpu(stage: str) -> bool:
    return stage.split("@", 1)[0] in GPU_STAGES


def stage_env(stage: str, gpu_group: str | None, slots: Slots, root: Path) -> dict[str, str]:
    """What a stage's process gets on top of the run's environment: its fixed share of the
    cores (cores // jobs torch threads), its GPUs (none for a CPU stage on a GPU machine), and
    the file its output goes to.

    The share is fixed rather than followed as stages start and end (cores.py's default)
    because PyTorch's CPU kernels split sums by thread count: a model trained with 2 threads
    differs in the last bits from one trained with 1, so a thread count that depended on
    what else happened to run would make the run's results depend on timing."""
    env = {**cores.for_children(slots.jobs), LOG_FILE: str(root / LOGS / f"{stage}.log")}
    if slots.gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpu_group or ""
    return env


class Board:
    """The run's state on the console: a line per change (`  12.3s  running  train@x`), or a
    live table when the output is a terminal."""

    STATES = ("waiting", "queued", "running", "done", "skipped", "failed", "not run")

    def __init__(self, stages: list[str], live: bool | None = None, out=None):
        self.out = out or sys.stdout
        self.state = dict.fromkeys(stages, "waiting")
        self.since = dict.fromkeys(stages, 0.0)
        self.note: dict[str, str] = {}
        self.start = time.monotonic()
        self.live = self.out.isatty() if live is None else live
        self._live = None

    @contextlib.contextmanager
    def shown(self) -> Iterator[Board]:
        if not self.live:
            yield self
            return
        from rich.console import Console
        from rich.live import Live

        # redrawn 4 times a second from the states, so a running stage's seconds go up
        live = Live(get_renderable=self._table, console=Console(file=self.out))
        with live:
            self._live = live
            try:
                yield self
            finally:
                live.refresh()
                self._live = None

    def set(self, stage: str, state: str, note: str = "") -> None:
        if self.state[stage] == state:
            return
        self.state[stage], self.since[stage] = state, time.monotonic()
        if note:
            self.note[stage] = note
        if self._live is not None:
            self._live.refresh()
            return
        elapsed = time.monotonic() - self.start
        # written, not printed: the flow's log_prints would take a print into Prefect's log
        self.out.write(f"{elapsed:7.1f}s  {state:<8} {stage}{'  ' + note if note else ''}\n")
        self.out.flush()

    def counts(self) -> str:
        shown = [s for s in self.STATES if s in self.state.values()]
        return ", ".join(f"{sum(v == s for v in self.state.values())} {s}" for s in shown)

    def _table(self):
        from rich.table import Table

        table = Table(title=self.counts(), title_justify="left", box=None)
        for column in ("stage", "state", "seconds", ""):
            table.add_column(column)
        now = time.monotonic()
        for stage, state in self.state.items():
            if state == "waiting":
                continue
            seconds = f"{now - self.since[stage]:.0f}" if state == "running" else ""
            table.add_row(stage, state, seconds, self.note.get(stage, ""))
        return table


class StagesFailed(RuntimeError):
    """One or more stages failed; the message names each with its error, and what did not
    run because of it."""


def run_graph(
    graph: dict[str, list[str]],
    root: Path,
    slots: Slots,
    board: Board,
    task_for: Callable[[str], Any],
    timeout: float,
) -> list[dict]:
    """Run the stages of `graph` (stage -> its upstream stages) inside a Prefect flow: each
    as the task `task_for(stage)` (flows.run_stage with the flow's retries and tags) in a
    thread pool of `slots.jobs` threads, started once its upstream stages succeeded (and a GPU
    slot is free, for a GPU stage on a GPU machine); a stage runs at most `timeout` seconds.
    Returns the task's result per stage, in `graph`'s order; raises StagesFailed when any
    failed, after every stage that could still run has run."""
    from prefect.task_runners import ThreadPoolTaskRunner

    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    running: dict[str, str | None] = {}  # stage -> its GPU group
    ended: queue.Queue[tuple[str, object]] = queue.Queue()
    free_gpus = slots.gpu_groups()
    downstream = {stage: len(descendants(graph, stage)) for stage in graph}
    LOGS.mkdir(parents=True, exist_ok=True)
    with ThreadPoolTaskRunner(max_workers=slots.jobs) as runner, dvc_quiet():
        while len(results) + len(errors) < len(graph):
            for stage in _blocked(graph, results, errors):
                errors[stage] = ""
                board.set(stage, "not run", "an upstream stage failed")
            for stage in _ready(graph, results, errors, running, downstream):
                needs_gpu = bool(slots.gpus) and uses_gpu(stage)
                if len(running) >= slots.jobs or (needs_gpu and not free_gpus):
                    board.set(stage, "queued")
                    continue
                gpu = free_gpus.pop(0) if needs_gpu else None
                running[stage] = gpu
                env = stage_env(stage, gpu, slots, root)
                parameters = {"stage": stage, "root": str(root), "env": env, "timeout": timeout}
                future = runner.submit(task_for(stage), parameters)
                future.add_done_callback(lambda f, s=stage: ended.put((s, f)))
                board.set(stage, "running", f"gpu {gpu}" if gpu else "")
            if not running:
                continue  # everything left was blocked: the loop's condition ends it
            stage, future = ended.get()
            gpu = running.pop(stage)
            if gpu is not None:
                free_gpus.append(gpu)
            try:
                results[stage] = future.result()
            except Exception as err:  # the stage's own error line, as run_stage raised it
                errors[stage] = str(err)
                board.set(stage, "failed", str(err).splitlines()[0])
            else:
                board.set(stage, "done" if results[stage]["ran"] else "skipped")
    failed = {stage: error for stage, error in errors.items() if error}
    if failed:
        skipped = sorted(stage for stage, error in errors.items() if not error)
        lines = [f"{len(failed)} stage(s) failed:"]
        lines += [f"- {error}" for error in failed.values()]
        if skipped:
            lines.append(f"not run, as a stage they depend on failed: {', '.join(skipped)}")
        raise StagesFailed("\n".join(lines))
    return [results[stage] for stage in graph]


def _ready(graph, results, errors, running, downstream) -> list[str]:
    """Stages not started whose upstream stages all succeeded: those with the most stages
    downstream first (`downstream`: stage -> that count; they hold up the most work), then in
    `graph`'s order."""
    ready = [
        stage
        for stage, upstream in graph.items()
        if stage not in results and stage not in errors and stage not in running
        if all(u in results for u in upstream)
    ]
    return sorted(ready, key=lambda stage: -downstream[stage])


def descendants(graph: dict[str, list[str]], stage: str) -> set[str]:
    """Every stage that depends on `stage`, directly or not."""
    found, todo = set(), [stage]
    while todo:
        current = todo.pop()
        for other, upstream in graph.items():
            if current in upstream and other not in found:
                found.add(other)
                todo.append(other)
    return found


def _blocked(graph, results, errors) -> list[str]:
    """Stages not yet ended that depend on a failed (or itself blocked) stage."""
    return [
        stage
        for stage, upstream in graph.items()
        if stage not in results and stage not in errors and any(u in errors for u in upstream)
    ]


@contextlib.contextmanager
def dvc_quiet() -> Iterator[None]:
    """DVC's own progress lines ("Running stage ...", "Updating lock file ...") off while
    stages run at once: interleaved they say nothing; the board says what runs. Its warnings
    and errors still print."""
    logger = logging.getLogger("dvc")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
