"""Prefect flows over the DVC pipeline: Prefect schedules, retries and shows runs; DVC still
decides what is up to date and owns dvc.lock and the outputs. No training logic lives here.

`pipeline_flow` runs the stages of dvc.yaml in dependency order, one Prefect task per stage
(`dvc repro --single-item <stage>`), so an unchanged stage is skipped by DVC exactly as in
`dvc repro`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

GPU_STAGES = ("judge", "tune", "train")  # tagged `gpu`: a concurrency limit can cap them
STAGE_TIMEOUT = 6 * 3600  # seconds; a stage that hangs fails instead of blocking the flow
SKIPPED = "didn't change, skipping"


def stage_order(root: str | Path = ".", targets: list[str] | None = None) -> list[str]:
    """Stage names of dvc.yaml (e.g. `train@cnn_digits`), dependencies first; with `targets`,
    only those stages and what they depend on."""
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
        order = [s.name for s in reversed(list(nx.topological_sort(graph)))]
    return [name for name in order if name in keep]


def stage_tags(stage: str) -> list[str]:
    kind = stage.split("@", 1)[0]
    return ["dvc-stage", kind] + (["gpu"] if kind in GPU_STAGES else [])


class StageInputError(RuntimeError):
    """The stage rejected its input (it exited 2): retrying cannot help."""


def _worth_retrying(task, task_run, state) -> bool:
    try:
        state.result()
    except StageInputError:
        return False
    except Exception:
        return True
    return True


@task(retry_jitter_factor=0.2, retry_condition_fn=_worth_retrying, task_run_name="{stage}")
def run_stage(stage: str, root: str, timeout: float = STAGE_TIMEOUT) -> dict:
    """`dvc repro --single-item <stage>`: DVC runs it only if its deps, params or outs
    changed. A failure raises with the stage's own error lines, so the task and flow states
    say what went wrong."""
    logger = get_run_logger()
    cmd = ["dvc", "repro", "--single-item", stage]
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{stage}: still running after {timeout:.0f} s; stopped") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
        message = "\n".join(lines[-5:]) or proc.stderr[-2000:]
        if "exited with 2" in proc.stderr:  # the stage's own one-line rejection of bad input
            raise StageInputError(f"{stage} failed on bad input (not retried):\n{message}")
        raise RuntimeError(f"{stage} failed (exit {proc.returncode}):\n{message}")
    ran = SKIPPED not in proc.stdout
    logger.info("%s: %s", stage, "ran" if ran else "up to date, skipped")
    return {"stage": stage, "ran": ran}


@flow(name="dl-pipeline", log_prints=True)
def pipeline_flow(
    params: str = "params.yaml",
    targets: list[str] | None = None,
    root: str = ".",
    retries: int = 2,
    retry_delay: float = 10.0,
) -> list[dict]:
    """Run the DVC pipeline (or `targets` and what they need) as Prefect tasks, in order;
    each stage is retried `retries` times, waiting `retry_delay` seconds, then doubling.

    `params` is validated first, so bad input fails the flow before any stage runs.
    """
    from pipeline.config import load_params

    root_path = Path(root).resolve()
    load_params(root_path / params)
    results = []
    for stage in stage_order(root_path, targets):
        stage_task = run_stage.with_options(
            tags=stage_tags(stage),
            retries=retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay),
        )
        # one stage at a time: DVC holds a lock on the repository while a stage runs
        results.append(stage_task(stage, str(root_path)))
    return results


if __name__ == "__main__":
    sys.exit(0 if pipeline_flow() is not None else 1)
