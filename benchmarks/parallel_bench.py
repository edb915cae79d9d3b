"""`make bench` (parallel stages): the shipped pipeline from clean with `python -m pipeline run`
(independent stages at once, `-j` at its default) against sequential `dvc repro`, each in a
fresh copy of the project, in the same run. Target: <= 0.70x the wall time.

The run is timed as a user meets it: `python -m pipeline run` with no PREFECT_API_URL starts
Prefect's temporary server itself, and that start-up is inside its time.

Same results: PyTorch's CPU kernels split sums by thread count, so a model trained with 1
thread differs in the last bits from one trained with 2. `pipeline run -j N` gives each stage
cores // N threads while `dvc repro` gives a stage every core; a third project runs `dvc
repro` with each stage pinned to the parallel run's thread count (OMP_NUM_THREADS), and that
one must match the parallel run exactly: every metric, and the dvc.lock hash of every output
that does not record when or how long something ran (tuning studies, the report, training
histories and timings are listed, not compared). Against the default `dvc repro`, which
outputs differ is reported.

`python -m benchmarks.parallel_bench [--quick] [-j N]`: --quick runs the tiny pipeline the
tests use. Results go to reports/benchmarks/parallel.json and reports/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import out_argument, read_test_metrics, row, venv_env, write_results
from pipeline import cores, parallel
from tests.conftest import TINY, make_project, shipped_params

# outputs that record when or how long something ran, so two runs never match byte for byte
UNSTABLE = (
    "/tuning",  # artifacts/<experiment>/tuning holds the study's journal
    "trials.csv",
    "tuning.json",
    "history.csv",
    "curves.csv",  # history.csv's numbers, in the form DVC plots
    "train.json",
)
UNSTABLE_PREFIXES = ("reports/index", "reports/experiments/")


def timed(cmd: list[str], project: Path, env: dict | None = None) -> tuple[float, str]:
    """(seconds, stdout) of `cmd` run in `project`."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=project, env={**venv_env(), **(env or {})}, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def timeline(board: str) -> dict[str, list[float]]:
    """stage -> [started, ended] seconds into the run, from the run's console lines."""
    spans: dict[str, list[float]] = {}
    for line in board.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("s") and parts[1] in ("running", "done"):
            spans.setdefault(parts[2], []).append(float(parts[0][:-1]))
    return spans


def lock_outputs(project: Path) -> dict[str, str]:
    """output path -> its hash, as dvc.lock records it."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out.get("md5") or out.get("hash", "")
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def metrics(project: Path) -> dict[str, dict]:
    """Every test metric of every evaluated experiment."""
    return {
        path.parent.name: read_test_metrics(project, path.parent.name)
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
    jobs = args.jobs or parallel.default_jobs(parallel.visible_gpus())
    threads = cores.for_children(jobs)  # what each stage of the parallel run gets
    with tempfile.TemporaryDirectory(prefix="parallel-bench-") as tmp:
        sequential, at_once, pinned = (
            make_project(Path(tmp) / name, raw) for name in ("sequential", "parallel", "pinned")
        )
        sequential_s, _ = timed(["dvc", "repro"], sequential)
        print(f"dvc repro: {sequential_s:.1f} s", flush=True)
        run = [sys.executable, "-m", "pipeline", "run", "-j", str(jobs)]
        parallel_s, board = timed(run, at_once)
        print(f"pipeline run -j {jobs}: {parallel_s:.1f} s", flush=True)
        noop_s, _ = timed(run, at_once)
        status_s, _ = timed(["dvc", "status"], at_once)
        pinned_s, _ = timed(["dvc", "repro"], pinned, threads)
        print(f"dvc repro, {threads['OMP_NUM_THREADS']} thread(s) a stage: {pinned_s:.1f} s")
        seq_outs, par_outs, pin_outs = (lock_outputs(p) for p in (sequential, at_once, pinned))
        seq_metrics, par_metrics, pin_metrics = (metrics(p) for p in (sequential, at_once, pinned))
    if not seq_outs.keys() == par_outs.keys() == pin_outs.keys():
        raise RuntimeError(f"dvc.lock outputs differ: {sorted(seq_outs.keys() ^ par_outs.keys())}")
    compared = sorted(p for p in seq_outs if deterministic(p))
    differing = [p for p in compared if pin_outs[p] != par_outs[p]]
    differing_default = [p for p in compared if seq_outs[p] != par_outs[p]]
    ratio = parallel_s / sequential_s
    results = {
        "pipeline": "tiny" if args.quick else "shipped",
        "jobs": jobs,
        "threads_per_stage": int(threads["OMP_NUM_THREADS"]),
        "sequential_dvc_repro_s": round(sequential_s, 2),
        "parallel_run_s": round(parallel_s, 2),
        "ratio": round(ratio, 3),
        "pinned_dvc_repro_s": round(pinned_s, 2),
        "noop_run_s": round(noop_s, 2),
        "dvc_status_s": round(status_s, 2),
        "outputs_compared": len(compared),
        "outputs_differing": differing,
        "outputs_differing_from_default_dvc_repro": differing_default,
        "outputs_not_compared": sorted(set(seq_outs) - set(compared)),
        "metrics_identical": pin_metrics == par_metrics,
        "metrics_identical_to_default_dvc_repro": seq_metrics == par_metrics,
        "experiments": len(seq_metrics),
        "timeline": timeline(board),
        "rows": [
            row(
                f"parallel stages: {'tiny' if args.quick else 'shipped'} pipeline from clean",
                f"`pipeline run -j {jobs}` {parallel_s:.1f} s",
                f"`dvc repro` {sequential_s:.1f} s",
                ratio,
                "<= 0.70x",
            )
        ],
    }
    summary = (
        f"against `dvc repro` with {threads['OMP_NUM_THREADS']} thread(s) a stage "
        f"({pinned_s:.1f} s): {len(compared) - len(differing)}/{len(compared)} dvc.lock "
        f"outputs identical, metrics of {len(seq_metrics)} experiments identical: "
        f"{results['metrics_identical']}; against the default `dvc repro` (every core a "
        f"stage) {len(differing_default)} outputs differ in the last bits; nothing stale: "
        f"`pipeline run` {noop_s:.1f} s, `dvc status` {status_s:.1f} s"
    )
    results["notes"] = [summary]
    print(f"ratio {ratio:.3f}; {summary}")
    write_results("parallel", results, args.out)
    return 0 if not differing and results["metrics_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
