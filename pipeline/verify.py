"""`python -m pipeline verify-determinism <experiment>`: run the experiment's train and evaluate
stages twice, each time in a scratch folder holding the project's inputs of those stages
(processed data, tuned params, the judge) with tracking off, and compare every output DVC
records for them (dvc.yaml's outs, metrics and plots) file by file, by md5. Exit 0 when they
are identical, 1 naming the files that differ.

DVC decides what to re-run by these md5s, so a stage that writes other bytes for the same
inputs and seed makes every downstream stage re-run and every retrained model look changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline import paths
from pipeline.config import Params
from pipeline.errors import PipelineError

STAGES = ("train", "evaluate")
# outputs that record how a run went (wall times, thread counts, MLflow run ids), not what it
# computed: they differ by design between two runs. Every other output must not.
VARYING = {
    "train.json": "wall time, throughput, threads and MLflow run id of the training",
    "summary.json": "evaluate's copy of train.json and its own MLflow run id",
    "study.journal": "Optuna's record of the trials, with their start and end times",
    "trials.csv": "each trial's duration and MLflow run id",
    "tuning.json": "the search's wall time and end time",
    "index.md": "the report's training times and throughput",
    "index.html": "the report's training times and throughput",
}


def stage_outputs(experiment: str) -> list[str]:
    """Every output dvc.yaml declares for the experiment's train and evaluate stages."""
    from dvc.repo import Repo

    names = {f"{stage}@{experiment}" for stage in STAGES}
    with Repo() as repo:
        return sorted(
            str(out.def_path)
            for stage in repo.index.stages
            if stage.name in names
            for out in stage.outs
        )


def quiet(params: Params, experiment: str, epochs: int | None) -> Params:
    """`params` with the experiment's tracking off (no runs, no registered versions) and
    optionally fewer epochs."""
    exp = params.experiments[experiment]
    if exp.train.distributed == "ddp":
        raise PipelineError(
            f"experiments.{experiment}.train.distributed: verify-determinism trains in one "
            "process; set distributed: none to verify the model itself"
        )
    train = exp.train.model_copy(update={"epochs": epochs}) if epochs else exp.train
    tracking = exp.tracking.model_copy(update={"enabled": False})
    exp = exp.model_copy(update={"train": train, "tracking": tracking})
    return params.model_copy(update={"experiments": {**params.experiments, experiment: exp}})


def run_in_scratch(params: Params, experiment: str, outputs: list[str]) -> dict[str, str]:
    """Run the stages in a fresh folder that links to the project's inputs; the md5 of every
    file under `outputs`, by path."""
    from pipeline.stages import evaluate, train

    dataset = params.experiments[experiment].dataset
    project = Path.cwd()
    scratch = Path(tempfile.mkdtemp(prefix=f"verify-{experiment}-"))
    try:
        for shared in (paths.processed_dir(dataset), paths.judge_dir(dataset)):
            if (project / shared).exists():
                (scratch / shared).parent.mkdir(parents=True, exist_ok=True)
                (scratch / shared).symlink_to(project / shared)
        tuned = paths.tuned_file(experiment)
        if (project / tuned).is_file():
            (scratch / tuned).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / tuned, scratch / tuned)
        os.chdir(scratch)
        try:
            train.run(params, experiment)
            evaluate.run(params, experiment)
        finally:
            os.chdir(project)
        return {
            str(file.relative_to(scratch)): hashlib.md5(file.read_bytes()).hexdigest()
            for out in outputs
            for file in (
                [scratch / out] if (scratch / out).is_file() else (scratch / out).rglob("*")
            )
            if file.is_file()
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def differences(first: dict[str, str], second: dict[str, str]) -> tuple[list[str], list[str]]:
    """(files that differ unexpectedly, files that differ by design) between two runs."""
    differ = sorted(p for p in first.keys() | second.keys() if first.get(p) != second.get(p))
    by_design = [p for p in differ if Path(p).name in VARYING]
    return [p for p in differ if p not in by_design], by_design


def run(params: Params, experiment: str, epochs: int | None) -> int:
    outputs = stage_outputs(experiment)
    params = quiet(params, experiment, epochs)
    first, second = (run_in_scratch(params, experiment, outputs) for _ in range(2))
    differ, by_design = differences(first, second)
    stages = " and ".join(f"{s}@{experiment}" for s in STAGES)
    if differ:
        print(
            f"{experiment}: {len(differ)} output file(s) of {stages} differ between two runs "
            "with the same inputs and seed:",
            file=sys.stderr,
        )
        for path in differ:
            print(f"  {path}: {first.get(path, 'missing')} vs {second.get(path, 'missing')}")
        return 1
    same = len(first) - len(by_design)
    print(f"{experiment}: deterministic: {same} output files of {stages} are bit-identical")
    for path in by_design:
        print(f"  {path} differs by design: {VARYING[Path(path).name]}")
    return 0
