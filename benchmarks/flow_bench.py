"""`make bench` (orchestration): the pipeline as a Prefect flow against `dvc repro` of the same
stages, each in a fresh copy of the project, in the same run.

1. full run: `pipeline_flow` (one Prefect task per DVC stage, on a temporary Prefect server
   started before the clock) vs `dvc repro`, from clean; the ratio is the flow's overhead.
2. no-op run: both again with nothing changed (every stage skipped).

The flow must create one task run per stage and none per batch or epoch; the benchmark
checks that count on the server. Run from the project root:
`python -m benchmarks.flow_bench [--quick] [--targets STAGE ...]`. Results are printed and
written to reports/benchmarks/flow.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import ROOT, make_project, shipped_params, shrink


def dvc_repro(project: Path, targets: list[str]) -> float:
    start = time.perf_counter()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        ["dvc", "repro", *targets], cwd=project, env=env, check=True, capture_output=True
    )
    return time.perf_counter() - start


def flow_run(project: Path, targets: list[str]) -> tuple[float, list[dict], int]:
    """Seconds, stage results and how many task runs the server recorded for the flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from pipeline.flows import pipeline_flow

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
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
    args = parser.parse_args(argv)
    raw = shipped_params()
    raw["defaults"]["device"] = "cpu"
    targets = list(args.targets)
    if args.quick:
        raw = shrink(raw)
        targets = targets or ["evaluate@mlp_digits", "evaluate@gru_sunspots"]
    results_file = ROOT / "reports" / "benchmarks" / "flow.json"

    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        by_dvc = make_project(Path(tmp) / "dvc", raw)
        by_flow = make_project(Path(tmp) / "flow", raw)
        print(f"full run of {' '.join(targets) or 'the whole pipeline'} ...", file=sys.stderr)
        # the flow goes first: it meets the colder caches
        flow_s, stages, task_runs = flow_run(by_flow, targets)
        dvc_s = dvc_repro(by_dvc, targets)
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
        "cpu_count": os.cpu_count(),
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
        "noop": {
            "dvc_repro_s": round(dvc_noop_s, 2),
            "flow_s": round(flow_noop_s, 2),
            "ratio": flow_noop_s / dvc_noop_s,
        },
    }
    print(
        f"flow: {len(stages)} stages as {task_runs} Prefect task runs in {flow_s:.1f} s vs "
        f"dvc repro {dvc_s:.1f} s -> {results['full']['ratio']:.3f}x; no-op: "
        f"{flow_noop_s:.2f} s vs {dvc_noop_s:.2f} s -> {results['noop']['ratio']:.2f}x"
    )
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
