"""`make bench` (parallel stages): the shipped pipeline from clean with `python -m pipeline run`
(independent stages at once, `-j` at its default) against sequential `dvc repro`, each in a
fresh copy of the project, in the same run. Target: <= 0.70x the wall time.

The run is timed as a user meets it: `python -m pipeline run` with no PREFECT_API_URL starts
Prefect's temporary server itself, and that start-up is inside its time. Both must end with
the same results: every metric identical, and the same dvc.lock output hashes for every stage
whose outputs are deterministic (the rest carry timings or timestamps: tuning studies, the
report, training histories; they are listed, not compared).

`python -m benchmarks.parallel_bench [--quick] [-j N]`: --quick runs the tiny pipeline the
tests use. Results go to reports/benchmarks/parallel.json and reports/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import out_argument, row, venv_env, write_results
from tests.conftest import TINY, make_project, shipped_params

# outputs that record when or how long something ran, so two runs never match byte for byte
UNSTABLE = ("study.journal", "trials.csv", "tuning.json", "history.csv", "train.json")
UNSTABLE_PREFIXES = ("reports/index", "reports/experiments/")


def timed(cmd: list[str], project: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, env=venv_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def lock_outputs(project: Path) -> dict[str, str]:
    """output path -> its hash, as dvc.lock records it."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out.get("md5") or out.get("hash", "")
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def metrics(project: Path) -> dict[str, dict]:
    return {
        path.parent.name: json.loads(path.read_text())
        for path in sorted((project / "reports/experiments").glob("*/metrics.json"))
    }


def deterministic(path: str) -> bool:
    return not path.endswith(UNSTABLE) and not path.startswith(UNSTABLE_PREFIXES)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parallel_bench")
    parser.add_argument("--quick", action="store_true", help="the tiny pipeline of the tests")
    parser.add_argument("-j", "--jobs", type=int, help="default: the run's own default")
    out_argument(parser)
    args = parser.parse_args(argv)
    raw = TINY if args.quick else shipped_params()
    if not args.quick:
        raw["defaults"]["device"] = "cpu"
    jobs = ["-j", str(args.jobs)] if args.jobs else []
    with tempfile.TemporaryDirectory(prefix="parallel-bench-") as tmp:
        sequential = make_project(Path(tmp) / "sequential", raw)
        at_once = make_project(Path(tmp) / "parallel", raw)
        sequential_s = timed(["dvc", "repro"], sequential)
        print(f"dvc repro: {sequential_s:.1f} s", flush=True)
        parallel_s = timed([sys.executable, "-m", "pipeline", "run", *jobs], at_once)
        print(f"pipeline run {' '.join(jobs) or '(default -j)'}: {parallel_s:.1f} s", flush=True)
        noop_s = timed([sys.executable, "-m", "pipeline", "run", *jobs], at_once)
        seq_outs, par_outs = lock_outputs(sequential), lock_outputs(at_once)
        seq_metrics, par_metrics = metrics(sequential), metrics(at_once)
    if seq_outs.keys() != par_outs.keys():
        raise RuntimeError(f"dvc.lock outputs differ: {sorted(seq_outs.keys() ^ par_outs.keys())}")
    compared = sorted(p for p in seq_outs if deterministic(p))
    differing = [p for p in compared if seq_outs[p] != par_outs[p]]
    ratio = parallel_s / sequential_s
    results = {
        "pipeline": "tiny" if args.quick else "shipped",
        "jobs": args.jobs or "default",
        "sequential_dvc_repro_s": round(sequential_s, 2),
        "parallel_run_s": round(parallel_s, 2),
        "ratio": round(ratio, 3),
        "noop_run_s": round(noop_s, 2),
        "outputs_compared": len(compared),
        "outputs_differing": differing,
        "outputs_not_compared": sorted(set(seq_outs) - set(compared)),
        "metrics_identical": seq_metrics == par_metrics,
        "experiments": len(seq_metrics),
        "rows": [
            row(
                f"parallel stages: {'tiny' if args.quick else 'shipped'} pipeline from clean",
                f"`pipeline run` {parallel_s:.1f} s",
                f"`dvc repro` {sequential_s:.1f} s",
                ratio,
                "<= 0.70x",
            )
        ],
    }
    print(
        f"ratio {ratio:.3f}; {len(compared) - len(differing)}/{len(compared)} deterministic "
        f"outputs identical; metrics identical: {results['metrics_identical']}; "
        f"no-op run {noop_s:.1f} s"
    )
    write_results("parallel", results, args.out)
    return 0 if not differing and results["metrics_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
