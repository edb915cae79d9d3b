"""The GPU check (benchmarks/gpu_check.sh) on this machine, where CUDA is absent: it says so and
exits cleanly; its dry run on CPU runs every step with the packages a GPU machine lacks
hidden, so the wheel list it carries there is complete; the list pins this project's
versions."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu_machine
from tests.conftest import ROOT


def check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    import sys

    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_OUT": str(out),
        "GPU_CHECK_WHEELS": str(out / "no-wheels"),  # this venv's packages, not .whl's
        **env,
    }
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_without_cuda_every_step_is_skipped_and_said(tmp_path):
    proc = check(tmp_path, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
    assert "gpu_check: no CUDA device visible (CUDA_VISIBLE_DEVICES='')" in proc.stdout
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["environment"]["cuda"] is False
    assert summary["steps"] == {} and summary["failed"] == []
    assert "every step skipped" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_dry_run_on_cpu_runs_every_step_with_only_the_gpu_machines_packages(tmp_path):
    proc = check(tmp_path, "--simulate", GPU_CHECK_DEVICE="cpu", CUDA_VISIBLE_DEVICES="")
    logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")}
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}"
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = summary["steps"]
    assert list(steps) == ["tests", "bench", "stages", "throughput"]
    assert all(r["status"] == "passed" for r in steps.values())
    # tests/gpu on CPU: all but the CUDA-only sync test (and the compile one, left out)
    assert steps["tests"]["failures"] == steps["tests"]["errors"] == 0
    assert steps["tests"]["passed"] >= 15
    assert set(steps["bench"]["variants"]) == {"fp32", "bf16 + channels_last"}
    assert steps["stages"]["failed"] is None and len(steps["stages"]["ran"]) == 10
    for name in ("cnn_digits", "vae_digits"):
        trained = steps["stages"]["experiments"][name]
        assert trained["device"] == "cpu" and trained["metrics"]
    for name in ("mlp_digits", "cnn_digits"):
        assert steps["throughput"][name]["ratio"] > 0
    benchmarks = [r["benchmark"] for r in summary["rows"]]
    assert len(benchmarks) == 4 and "hand-written" in benchmarks[-1]
    assert "| tests | passed |" in (tmp_path / "gpu_check.md").read_text()


def test_the_guard_hides_what_a_gpu_machine_lacks(tmp_path):
    import sys

    code = (
        "from benchmarks import gpu_machine; gpu_machine.install(); import numpy, optuna\n"
        "try:\n    import dvc\nexcept ModuleNotFoundError as err:\n    print(err)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "a GPU machine lacks dvc; add it to gpu_wheels.txt" in proc.stdout


def test_the_wheel_list_pins_this_project_s_versions():
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[gpu_machine.normal(name)] = version.strip()
    lines = [line.split("#")[0].strip() for line in gpu_machine.WHEELS.read_text().splitlines()]
    wheels = [line for line in lines if line]
    assert wheels
    for line in wheels:
        name, _, version = line.partition("==")
        assert version == pinned[gpu_machine.normal(name)], line
    assert not set(gpu_machine.installed_names()) & set(gpu_machine.wheel_names())
