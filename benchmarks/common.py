"""What every benchmark shares: a scratch project, timing of fresh processes, result files.

Each benchmark writes reports/benchmarks/<name>.json with `rows` (benchmark, ours, reference,
ratio, target) and `python -m benchmarks.report` turns all of them into reports/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "reports" / "benchmarks"


def setup_project(workdir: Path, raw: dict | None = None):
    """A scratch copy of the shipped params (CPU) in `workdir`, the working directory from now
    on, with digits ingested and preprocessed."""
    import yaml

    from pipeline.config import load_params
    from pipeline.stages import ingest, preprocess

    if raw is None:
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["defaults"]["device"] = "cpu"
        raw["defaults"]["tracking"]["log_model"] = False
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    os.chdir(workdir)
    params = load_params("params.yaml")
    ingest.run(params, "digits")
    preprocess.run(params, "digits")
    return params


def venv_env() -> dict[str, str]:
    """The environment with this interpreter's tools first on PATH, as `make` sets it."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg"}


def timed_process(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run `cmd` to completion: (wall seconds, peak RSS in MB of the process itself)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=venv_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def row(benchmark: str, ours: str, reference: str, ratio: float | None, target: str) -> dict:
    return {
        "benchmark": benchmark,
        "ours": ours,
        "reference": reference,
        "ratio": None if ratio is None else round(ratio, 3),
        "target": target,
    }


def out_argument(parser) -> None:
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"result folder (default {RESULTS})"
    )


def write_results(name: str, results: dict, out: Path = RESULTS) -> Path:
    """<out>/<name>.json, then <out>.md (reports/benchmarks.md) from every result file."""
    from benchmarks import report

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    results = {"cpu_count": os.cpu_count(), **results}
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    markdown = report.write(out)
    print(f"wrote {path} and {markdown}")
    return path


def read_test_metrics(project: Path, experiment: str) -> dict[str, float]:
    """Every test metric evaluate@ wrote for `experiment` (details.json; metrics.json, DVC's
    metric file, holds only the headline)."""
    from pipeline import paths

    return json.loads((project / paths.details_file(experiment)).read_text())["metrics"]
