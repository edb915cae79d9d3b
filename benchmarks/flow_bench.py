"""`make bench` (orchestration): the whole pipeline as a Prefect flow against `dvc repro` of the
same stages and against plain scripts, each in a fresh copy of the project, in the same run.

1. full run: `pipeline_flow` (one Prefect task per DVC stage, on a temporary Prefect server
   started before the clock) vs `dvc repro`, from clean; the ratio is the flow's overhead.
2. plain scripts, with MLflow, Optuna, Prefect (and DVC) all off: every stage's module run
   directly in dependency order with tracking.enabled false and tuning off, then the flow's
   tuning trials replayed as plain training runs (same values, as many epochs as each trial
   ran). The flow / plain ratio is what the tools cost together (target <= 1.25x); for both,
   the share of wall time spent in training loops is reported.
3. no-op run: flow and `dvc repro` again with nothing changed (every stage skipped).

The flow must create one task run per stage and none per batch or epoch; the benchmark
checks that count on the server. Run from the project root:
`python -m benchmarks.flow_bench [--quick] [--targets STAGE ...]`. Results are printed and
written to reports/benchmarks/flow.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import out_argument, row, venv_env, write_results
from tests.conftest import make_project, shipped_params, shrink


def dvc_repro(project: Path, targets: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["dvc", "repro", *targets], cwd=project, env=venv_env(), check=True, capture_output=True
    )
    return time.perf_counter() - start


def plain_params(raw: dict) -> dict:
    """The same pipeline with MLflow and Optuna off."""
    raw = json.loads(json.dumps(raw))
    raw["defaults"]["tracking"]["enabled"] = False
    for exp in [raw["defaults"], *raw["experiments"].values()]:
        exp.setdefault("tune", {})["enabled"] = False
    return raw


def plain_run(project: Path, targets: list[str], flow_project: Path) -> tuple[float, float]:
    """Every stage's module as a plain script in dependency order, then the flow's tuning
    trials replayed as plain training. Seconds, and seconds of that inside training loops."""
    from pipeline.flows import stage_order

    order = stage_order(project, targets or None)
    start = time.perf_counter()
    for stage in order:
        kind, _, name = stage.partition("@")
        subprocess.run(
            [sys.executable, "-m", f"pipeline.stages.{kind}", *([name] if name else [])],
            cwd=project,
            env=venv_env(),
            check=True,
            capture_output=True,
        )
    replay_s = replay_trials(project, flow_project)
    return time.perf_counter() - start, train_seconds(project) + replay_s


def flow_studies(flow_project: Path):
    """(experiment, its params, the study) for each experiment the flow tuned."""
    import optuna

    from pipeline import paths
    from pipeline.config import load_params
    from pipeline.tuning import studies

    params = load_params(flow_project / "params.yaml")
    for name, exp in params.experiments.items():
        journal = flow_project / paths.study_journal(name)
        if exp.tune.enabled and journal.is_file():
            storage = studies.open_storage(str(journal), exp.tune.heartbeat_seconds)
            study = optuna.load_study(study_name=studies.study_name(name, exp), storage=storage)
            yield name, exp, study


def replay_trials(project: Path, flow_project: Path) -> float:
    """Train each tuning trial's values for as many epochs as it ran, without Optuna or MLflow
    (in this process, as a worker runs its trials). Returns the seconds it took."""
    import optuna

    from pipeline import engine
    from pipeline.config import apply_overrides, unflatten
    from pipeline.errors import PipelineError
    from pipeline.experiment import prepare
    from pipeline.tuning import search

    here = os.getcwd()
    os.chdir(project)
    start = time.perf_counter()
    try:
        for name, exp, study in flow_studies(flow_project):
            base = exp.model_dump(mode="json")
            for trial in study.get_trials(deepcopy=False):
                epochs = trial.user_attrs.get("epochs", 0)
                if not epochs:
                    continue
                values = search.sample(optuna.trial.FixedTrial(trial.params), exp.tune, base)
                one = apply_overrides(exp, unflatten(values), "replay")
                one = apply_overrides(one, {"tracking": {"enabled": False}}, "replay")
                prep = prepare(one, name)
                cfg = one.train.model_copy(update={"epochs": epochs})
                with contextlib.suppress(PipelineError):  # diverged: it failed in the flow too
                    engine.fit(prep.model, prep.train, prep.val, cfg, prep.task)
    finally:
        os.chdir(here)
    return time.perf_counter() - start


def train_seconds(project: Path) -> float:
    """Seconds the train stages spent in their training loops (train.json)."""
    files = (project / "artifacts").glob("*/train.json")
    return sum(json.loads(f.read_text())["train_seconds"] for f in files)


def trial_seconds(flow_project: Path) -> float:
    """Seconds the flow's tuning trials took, start to finish (each a training loop)."""
    total = 0.0
    for _, _, study in flow_studies(flow_project):
        for t in study.get_trials(deepcopy=False):
            if t.datetime_start and t.datetime_complete:
                total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total


def flow_run(project: Path, targets: list[str]) -> tuple[float, list[dict], int]:
    """Seconds, stage results and how many task runs the server recorded for the flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from pipeline.flows import pipeline_flow

    os.environ["PATH"] = venv_env()["PATH"]
    start = time.perf_counter()
    state = pipeline_flow(root=str(project), targets=targets or None, return_state=True)
    seconds = time.perf_counter() - start
    results = state.result()
    ids = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=ids)
    return seconds, results, len(tasks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flow_bench")
    parser.add_argument("--quick", action="store_true", help="tiny models, two experiments")
    parser.add_argument("--targets", nargs="*", default=[], help="default: the whole pipeline")
    out_argument(parser)
    args = parser.parse_args(argv)
    raw = shipped_params()
    raw["defaults"]["device"] = "cpu"
    targets = list(args.targets)
    if args.quick:
        raw = shrink(raw)
        targets = targets or ["evaluate@mlp_digits", "evaluate@gru_sunspots"]

    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        by_dvc = make_project(Path(tmp) / "dvc", raw)
        by_flow = make_project(Path(tmp) / "flow", raw)
        print(f"full run of {' '.join(targets) or 'the whole pipeline'} ...", file=sys.stderr)
        # the flow goes first: it meets the colder caches
        flow_s, stages, task_runs = flow_run(by_flow, targets)
        dvc_s = dvc_repro(by_dvc, targets)
        print("plain scripts ...", file=sys.stderr)
        plain = make_project(Path(tmp) / "plain", plain_params(raw))
        plain_s, plain_compute_s = plain_run(plain, targets, by_flow)
        flow_compute_s = train_seconds(by_flow) + trial_seconds(by_flow)
        print("no-op run ...", file=sys.stderr)
        flow_noop_s, again, _ = flow_run(by_flow, targets)
        dvc_noop_s = dvc_repro(by_dvc, targets)
    ran = sum(r["ran"] for r in stages)
    if task_runs != len(stages) or any(r["ran"] for r in again):
        raise SystemExit(
            f"flow_bench: expected one task run per stage ({len(stages)}, got {task_runs}) "
            f"and nothing re-run on the second pass ({sum(r['ran'] for r in again)} re-ran)"
        )
    results = {
        "quick": args.quick,
        "targets": targets or "all",
        "stages": len(stages),
        "stages_run": ran,
        "task_runs": task_runs,
        "full": {
            "dvc_repro_s": round(dvc_s, 1),
            "flow_s": round(flow_s, 1),
            "ratio": flow_s / dvc_s,
        },
        "plain": {
            "plain_s": round(plain_s, 1),
            "flow_s": round(flow_s, 1),
            "ratio": flow_s / plain_s,
            "flow_compute_share": flow_compute_s / flow_s,
            "plain_compute_share": plain_compute_s / plain_s,
        },
        "noop": {
            "dvc_repro_s": round(dvc_noop_s, 2),
            "flow_s": round(flow_noop_s, 2),
            "ratio": flow_noop_s / dvc_noop_s,
        },
    }
    share = results["plain"]
    print(
        f"flow: {len(stages)} stages as {task_runs} Prefect task runs in {flow_s:.1f} s vs "
        f"dvc repro {dvc_s:.1f} s -> {results['full']['ratio']:.3f}x; vs plain scripts "
        f"{plain_s:.1f} s -> {share['ratio']:.3f}x (in training loops: "
        f"{share['flow_compute_share']:.0%} vs {share['plain_compute_share']:.0%}); no-op: "
        f"{flow_noop_s:.2f} s vs {dvc_noop_s:.2f} s -> {results['noop']['ratio']:.2f}x"
    )
    what = "the shrunk pipeline" if args.quick else "the shipped pipeline"
    if targets:
        what += f" up to {', '.join(targets)}"
    rows = [
        row(
            f"{what}: Prefect flow + MLflow + Optuna vs plain scripts (all off)",
            f"{flow_s:.1f} s ({share['flow_compute_share']:.0%} in training loops)",
            f"{plain_s:.1f} s ({share['plain_compute_share']:.0%} in training loops)",
            share["ratio"],
            "<= 1.25x",
        ),
        row(
            f"{what}: Prefect flow vs `dvc repro` ({len(stages)} stages, {task_runs} task runs)",
            f"{flow_s:.1f} s",
            f"{dvc_s:.1f} s",
            results["full"]["ratio"],
            "reported",
        ),
        row(
            f"{what}: no-op, Prefect flow vs `dvc repro`",
            f"{flow_noop_s:.2f} s",
            f"{dvc_noop_s:.2f} s",
            results["noop"]["ratio"],
            "reported",
        ),
    ]
    write_results("flow", {**results, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
