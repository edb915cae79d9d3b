"""`make bench` (start-up, DVC, memory): fixed costs a user meets on every command.

1. `python -m pipeline check` vs `dvc status` (DVC's own view of what changed). Target <= 1 s.
2. each stage as its own process on the shrunk pipeline: wall time, import time of its module
   and peak RSS, beside the floor every torch stage pays (`python -c "import torch"`).
3. a no-op `dvc repro` of the pipeline (target <= 1.5 s, nothing re-run), then one
   experiment's learning rate changed: which stages re-run.

Run from the project root: `python -m benchmarks.startup_bench [--quick]`.
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import out_argument, row, timed_process, venv_env, write_results
from tests.conftest import TINY, make_project, shipped_params, shrink

EXPERIMENT = "mlp_digits"


def median_seconds(cmd: list[str], cwd: Path, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=venv_env(), check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def repro(project: Path) -> tuple[float, list[str]]:
    """`dvc repro`: seconds and the stages it ran."""
    start = time.perf_counter()
    proc = subprocess.run(
        ["dvc", "repro"], cwd=project, env=venv_env(), check=True, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    return seconds, re.findall(r"^Running stage '([^']+)'", proc.stdout, re.MULTILINE)


def bench_dvc(project: Path, reps: int) -> dict:
    noop = []
    for _ in range(reps):
        seconds, ran = repro(project)
        noop.append(seconds)
        if ran:
            raise SystemExit(f"startup_bench: a no-op dvc repro re-ran {ran}")
    status_s = median_seconds(["dvc", "status"], project, reps)
    params_file = project / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    train = raw["experiments"][EXPERIMENT].setdefault("train", {})
    train.setdefault("optimizer", {})["lr"] = 0.002
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    seconds, ran = repro(project)
    return {
        "noop_s": round(statistics.median(noop), 2),
        "dvc_status_s": round(status_s, 2),
        "after_lr_change": {"seconds": round(seconds, 1), "stages_run": ran},
    }


def bench_stages(project: Path, quick: bool) -> dict:
    """Each stage kind once, in a fresh process, after the pipeline ran (outputs rewritten)."""
    py = sys.executable
    torch_floor, _ = timed_process([py, "-c", "import torch"], project)
    stages = {
        "ingest@digits": ["pipeline.stages.ingest", "digits"],
        "preprocess@digits": ["pipeline.stages.preprocess", "digits"],
        "judge@digits": ["pipeline.stages.judge", "digits"],
        f"tune@{EXPERIMENT} (tuning off)": ["pipeline.stages.tune", EXPERIMENT],
        "tune@cnn_digits (2 trials)": ["pipeline.stages.tune", "cnn_digits"],
        f"train@{EXPERIMENT}": ["pipeline.stages.train", EXPERIMENT],
        f"evaluate@{EXPERIMENT}": ["pipeline.stages.evaluate", EXPERIMENT],
        "report": ["pipeline.stages.report"],
    }
    if quick:
        stages = {k: v for k, v in stages.items() if k.startswith(("ingest", "train"))}
    out = {"python_import_torch_s": round(torch_floor, 2)}
    for name, (module, *args) in stages.items():
        import_s, _ = timed_process([py, "-c", f"import {module}"], project)
        wall_s, rss_mb = timed_process([py, "-m", module, *args], project)
        out[name] = {
            "import_s": round(import_s, 2),
            "wall_s": round(wall_s, 2),
            "peak_rss_mb": round(rss_mb),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup_bench")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and stages")
    out_argument(parser)
    args = parser.parse_args(argv)
    reps = 1 if args.quick else 5
    # quick: the smallest pipeline (one dataset, one experiment), every stage kind still there
    raw = copy.deepcopy(TINY) if args.quick else shrink(shipped_params())
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "project", raw)
        print("dvc repro of the shrunk pipeline ...", file=sys.stderr)
        full_s, ran = repro(project)
        check_s = median_seconds([sys.executable, "-m", "pipeline", "check"], project, reps)
        dvc = bench_dvc(project, min(reps, 3))
        stages = bench_stages(project, args.quick)

    changed = dvc["after_lr_change"]["stages_run"]
    print(f"pipeline check {check_s:.2f} s vs dvc status {dvc['dvc_status_s']} s")
    print(f"no-op dvc repro {dvc['noop_s']} s; after an lr change ran: {', '.join(changed)}")
    rows = [
        row(
            "`python -m pipeline check` (validate params + plan)",
            f"{check_s:.2f} s",
            f"{dvc['dvc_status_s']} s (`dvc status`)",
            check_s / dvc["dvc_status_s"],
            "<= 1.0 s",
        ),
        row(
            f"no-op `dvc repro` ({len(ran)} stages, 0 re-run)",
            f"{dvc['noop_s']} s",
            f"{dvc['dvc_status_s']} s (`dvc status`)",
            dvc["noop_s"] / dvc["dvc_status_s"],
            "<= 1.5 s",
        ),
        row(
            f"`dvc repro` after experiments.{EXPERIMENT}.train.optimizer.lr changed",
            f"ran {', '.join(changed)} ({dvc['after_lr_change']['seconds']} s)",
            f"full pipeline {full_s:.0f} s",
            None,
            "only that experiment's stages and the report",
        ),
    ]
    floor = stages["python_import_torch_s"]
    for name, r in stages.items():
        if name == "python_import_torch_s":
            continue
        print(
            f"{name}: {r['wall_s']} s (imports {r['import_s']} s), peak RSS {r['peak_rss_mb']} MB"
        )
        rows.append(
            row(
                f"stage {name}: wall (imports), peak RSS",
                f"{r['wall_s']} s ({r['import_s']} s), {r['peak_rss_mb']} MB",
                f"{floor} s (`python -c 'import torch'`)",
                r["wall_s"] / floor,
                "reported",
            )
        )
    write_results(
        "startup",
        {
            "quick": args.quick,
            "check_s": round(check_s, 2),
            "full_repro_s": round(full_s, 1),
            "dvc": dvc,
            "stages": stages,
            "rows": rows,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
