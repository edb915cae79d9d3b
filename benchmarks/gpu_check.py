"""The GPU check: everything this project's GPU path promises, run on a GPU machine in one go.

`benchmarks/gpu_check.sh` (which installs the wheels of benchmarks/gpu_wheels.txt first) runs
this module on a fresh machine that holds only the source tree, PyTorch and the packages the
GPU machines come with. Steps, each with its time limit, within an 8-minute budget:

1. `tests/gpu` (pytest, marker `gpu`): the engine's CUDA path, every model family, tune@'s
   pinned workers, `predict` on CUDA.
2. `benchmarks.gpu_bench --compile`: the CIFAR-shaped CNN in fp32 vs bf16 + channels_last
   (+ compile), samples/s and the fraction of the bf16 matmul peak measured in the same run.
3. The pipeline's stages as DVC runs them, on the GPU, tracking off: ingest, preprocess and
   judge of digits, then tune (off), train and evaluate of `cnn_digits` and `vae_digits`.
4. The train stage's training loop vs a hand-written loop on the same GPU, side by side.

Results go to $GPU_CHECK_OUT (default reports/gpu_check): gpu_check.json (its `rows` are in
the format of reports/benchmarks/*.json, so copying it there puts them in
reports/benchmarks.md), gpu_check.md, the pytest report and gpu_bench's results. Without CUDA
every step is skipped, which the summary says, and the exit status is 0; a failed step makes
it 1. `GPU_CHECK_DEVICE=cpu` runs every step on the CPU with tiny sizes (the dry run `make
test` does), and `--simulate` hides the packages a GPU machine lacks (benchmarks/gpu_machine.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from benchmarks import gpu_machine, report
from benchmarks.common import ROOT, row

OUT = ROOT / "reports" / "gpu_check"
BUDGET = 8 * 60  # seconds for every step together
LIMITS = {"tests": 240, "bench": 200, "stages": 150, "throughput": 120}
EXPERIMENTS = ("cnn_digits", "vae_digits")  # a classifier and a generative model
THROUGHPUT_EPOCHS = {"mlp_digits": 100, "cnn_digits": 30}
TARGETS = {"bf16 + channels_last + compile": 2.0, "train stage vs hand-written": 0.9}


class Steps:
    """Runs the steps as processes within one time budget; keeps what each did."""

    def __init__(self, out: Path, env: dict[str, str]):
        self.out, self.env = out, env
        self.deadline = time.monotonic() + BUDGET
        self.results: dict[str, dict] = {}

    def process(self, step: str, cmd: list[str], cwd: Path = ROOT, env: dict | None = None):
        """Run `cmd` for `step`; its output goes to <out>/<step>.log. Returns its exit status
        (124 when it ran past its limit)."""
        limit = max(1.0, min(LIMITS[step], self.deadline - time.monotonic()))
        log = self.out / f"{step}.log"
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            try:
                return subprocess.run(
                    cmd,
                    cwd=cwd,
                    env=env or self.env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=limit,
                ).returncode
            except subprocess.TimeoutExpired:
                f.write(f"\n{step}: stopped after its limit of {limit:.0f} s\n")
                return 124

    def record(self, step: str, started: float, ok: bool, **details) -> None:
        seconds = round(time.monotonic() - started, 1)
        self.results[step] = {"status": "passed" if ok else "failed", "seconds": seconds, **details}
        print(
            f"gpu_check: {step}: {'passed' if ok else 'FAILED'} in {seconds} s "
            f"{json.dumps(details, default=str)[:300]}",
            flush=True,
        )


def run_tests(steps: Steps, cpu: bool) -> None:
    started = time.monotonic()
    report = steps.out / "gpu_tests.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/gpu",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        "-o",
        "addopts=--strict-markers -ra",
    ]
    if cpu:  # the compile test is also in tests/test_engine.py; on CPU it costs most here
        cmd += ["-k", "not compile"]
    # only pytest itself: the plugins installed beside it differ from machine to machine
    status = steps.process("tests", cmd, env={**steps.env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if report.is_file():
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {key: int(suite.get(key, 0)) for key in counts}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    steps.record("tests", started, status == 0 and passed > 0, exit=status, passed=passed, **counts)


def run_bench(steps: Steps, cpu: bool) -> None:
    started = time.monotonic()
    folder = steps.out / "bench"
    cmd = [sys.executable, "-m", "benchmarks.gpu_bench", "--out", str(folder)]
    cmd += ["--device", "cpu", "--quick"] if cpu else ["--compile"]
    status = steps.process("bench", cmd)
    result = folder / "gpu.json"
    bench = json.loads(result.read_text()) if status == 0 and result.is_file() else {}
    steps.record(
        "bench",
        started,
        bool(bench.get("variants")),
        exit=status,
        variants=bench.get("variants", {}),
        peak_flops=bench.get("peak_flops"),
    )
    steps.results["bench"]["rows"] = bench.get("rows", [])


def scratch_params(cpu: bool) -> dict:
    """The shipped params for the check's experiments: digits only, tuning and tracking off,
    on the GPU (the CPU with tiny models and one epoch for the dry run)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"] = {"digits": raw["datasets"]["digits"]}
    keep = set(EXPERIMENTS) | set(THROUGHPUT_EPOCHS)
    raw["experiments"] = {k: v for k, v in raw["experiments"].items() if k in keep}
    raw.pop("synthetic", None)  # its generator is not among these experiments
    raw["defaults"]["device"] = "cpu" if cpu else "cuda"
    raw["defaults"]["tracking"]["enabled"] = False
    for exp in raw["experiments"].values():
        exp.pop("tune", None)
    if cpu:
        from models.configs import CONFIGS

        raw["defaults"]["train"]["epochs"] = 1
        for exp in raw["experiments"].values():
            exp.setdefault("train", {})["epochs"] = 1
            tiny = vars(CONFIGS[exp["model"]["name"]].tiny())
            exp["model"] = {
                "name": exp["model"]["name"],
                **{k: list(v) if isinstance(v, tuple) else v for k, v in tiny.items()},
            }
    return raw


def run_stages(steps: Steps, project: Path) -> None:
    """The stages as `dvc repro` runs them (`python -m pipeline.stages.<stage> <target>`)."""
    from pipeline import paths

    started = time.monotonic()
    plan = [
        ("ingest", "digits"),
        ("preprocess", "digits"),
        ("plan", None),
        ("judge", "digits"),
    ]
    for name in EXPERIMENTS:
        plan += [("tune", name), ("train", name), ("evaluate", name)]
    done, failed = [], None
    for stage, target in plan:
        cmd = [sys.executable, "-m", f"pipeline.stages.{stage}"] + ([target] if target else [])
        if steps.process("stages", cmd, cwd=project) != 0:
            failed = f"{stage}@{target}" if target else stage
            break
        done.append(f"{stage}@{target}" if target else stage)
    trained = {}
    for name in EXPERIMENTS:
        summary, metrics = (
            project / paths.train_summary_file(name),
            project / paths.metrics_file(name),
        )
        if summary.is_file() and metrics.is_file():
            info = json.loads(summary.read_text())
            trained[name] = {
                "device": info.get("device"),
                "samples_per_second": info.get("samples_per_second"),
                "train_seconds": info.get("train_seconds"),
                "metrics": json.loads(metrics.read_text()),
            }
    steps.record("stages", started, failed is None, ran=done, failed=failed, experiments=trained)


def run_throughput(steps: Steps, project: Path, cpu: bool) -> None:
    """benchmarks.train_bench's side-by-side comparison, in its own process, on the device."""
    started = time.monotonic()
    epochs = {name: 2 for name in THROUGHPUT_EPOCHS} if cpu else THROUGHPUT_EPOCHS
    result = steps.out / "throughput.json"
    code = (
        "import json, sys; from pipeline.config import load_params; "
        "from benchmarks.train_bench import bench_throughput; "
        f"r = bench_throughput(load_params('params.yaml'), {epochs!r}, {1 if cpu else 3}); "
        f"open({str(result)!r}, 'w').write(json.dumps(r))"
    )
    status = steps.process("throughput", [sys.executable, "-c", code], cwd=project)
    measured = json.loads(result.read_text()) if status == 0 and result.is_file() else {}
    steps.record("throughput", started, bool(measured), exit=status, **measured)


def environment(cpu: bool) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "CPU",
        "run_on": "cpu (dry run)" if cpu else "cuda",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def rows_of(results: dict, device: str) -> list[dict]:
    """The rows for reports/benchmarks.md: gpu_bench's and the train stage vs hand-written."""
    rows = list(results.get("bench", {}).get("rows", []))
    for name, r in results.get("throughput", {}).items():
        if isinstance(r, dict) and "ratio" in r:
            rows.append(
                row(
                    f"train stage's loop vs a hand-written loop, {name} ({device}, {r['epochs']} "
                    "epochs)",
                    f"{r['ours_samples_per_s']:,} samples/s",
                    f"{r['hand_written_samples_per_s']:,} samples/s (hand-written loop)",
                    r["ratio"],
                    f">= {TARGETS['train stage vs hand-written']}x",
                )
            )
    return rows


def markdown(summary: dict) -> str:
    env = summary["environment"]
    lines = [
        f"# GPU check: {env['device']}",
        "",
        f"torch {env['torch']}, Python {env['python']}, run on {env['run_on']}.",
        "",
    ]
    if summary.get("skipped"):
        return "\n".join(lines + [summary["skipped"], ""])
    lines += ["| step | status | seconds |", "| --- | --- | --- |"]
    lines += [
        f"| {name} | {r['status']} | {r['seconds']} |" for name, r in summary["steps"].items()
    ]
    tests = summary["steps"].get("tests", {})
    if tests:
        lines += [
            "",
            f"tests/gpu: {tests.get('passed', 0)} passed, {tests.get('failures', 0)} "
            f"failed, {tests.get('errors', 0)} errors, {tests.get('skipped', 0)} skipped.",
        ]
    if summary["rows"]:
        lines += [
            "",
            "| benchmark | ours | reference | ratio | target |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [report.row_line(r) for r in summary["rows"]]
    for name, r in summary["steps"].get("stages", {}).get("experiments", {}).items():
        lines += [
            "",
            f"{name}: trained on {r['device']}, {r['samples_per_second']:,.0f} "
            f"samples/s; test metrics {json.dumps(r['metrics'])}",
        ]
    return "\n".join(lines + [""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("GPU_CHECK_OUT") or OUT))
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="hide the packages a GPU machine lacks (benchmarks/gpu_machine.py)",
    )
    args = parser.parse_args(argv)
    cpu = os.environ.get("GPU_CHECK_DEVICE") == "cpu"
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    path = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if cpu:
        env["PIPELINE_TEST_DEVICE"] = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        if args.simulate:
            gpu_machine.install()
            path.insert(0, str(gpu_machine.site_folder(Path(tmp))))
        env["PYTHONPATH"] = os.pathsep.join(path)
        summary = {"environment": environment(cpu), "steps": {}, "rows": []}
        if not (cpu or summary["environment"]["cuda"]):
            summary["skipped"] = (
                "no CUDA device visible (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}): every step skipped; "
                "GPU_CHECK_DEVICE=cpu runs them on the CPU"
            )
            print(f"gpu_check: {summary['skipped']}")
        else:
            steps = Steps(out, env)
            run_tests(steps, cpu)
            run_bench(steps, cpu)
            project = Path(tmp) / "project"
            project.mkdir()
            (project / "params.yaml").write_text(
                yaml.safe_dump(scratch_params(cpu), sort_keys=False)
            )
            run_stages(steps, project)
            run_throughput(steps, project, cpu)
            summary["steps"] = copy.deepcopy(steps.results)
            summary["steps"].get("bench", {}).pop("rows", None)
            summary["rows"] = rows_of(steps.results, summary["environment"]["device"])
    failed = [name for name, r in summary["steps"].items() if r["status"] != "passed"]
    summary["failed"] = failed
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(summary))
    print(
        f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
