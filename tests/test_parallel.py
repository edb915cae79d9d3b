"""`python -m pipeline run -j N`: independent stages at once through Prefect, DVC still in
charge. On a small DVC project whose stages are shell scripts (they meet each other to prove
they ran at once, and record the environment they got), then on the real pipeline: the same
dvc.lock and metrics as `dvc repro`, and `kill -9` of the whole run followed by a re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import cores, locks, parallel, paths
from tests.conftest import TINY, make_project, run, venv_env, wait_for_file
from tests.reliability.test_crash_resume import LONG  # long enough to kill mid-training

# ---- slots and environments (no server) -------------------------------------------------------


def test_gpu_slots_split_the_gpus_and_share_them_when_asked():
    assert parallel.Slots(2, ["0", "1", "2", "3"]).gpu_groups() == ["0", "1", "2", "3"]
    assert parallel.Slots(2, ["0", "1", "2", "3"], gpus_per_stage=2).gpu_groups() == [
        "0,1",
        "2,3",
    ]
    assert parallel.Slots(4, ["5"], stages_per_gpu=3).gpu_groups() == ["5", "5", "5"]
    assert parallel.Slots(4, []).gpu_groups() == []
    with pytest.raises(ValueError, match="gpus_per_stage must be between 1 and the 2 GPU"):
        parallel.Slots(2, ["0", "1"], gpus_per_stage=3)
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        parallel.Slots(0)


def test_stage_environment_names_its_gpus_and_its_log(tmp_path, monkeypatch):
    slots = parallel.Slots(2, ["0", "1"])
    env = parallel.stage_env("train@x", "1", slots, tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    # a fixed share of the cores (not followed as stages come and go: results would depend
    # on timing), marked as fixed for pipeline/cores.py
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = parallel.stage_env("train@x", "1", slots, tmp_path)
    assert env["OMP_NUM_THREADS"] == str(max(1, cores.available() // 2))
    assert env[cores.SHARED] == ""
    assert env[parallel.LOG_FILE] == str(tmp_path / "artifacts/logs/train@x.log")
    # a CPU stage on a GPU machine sees no GPU; on a CPU machine nothing is set
    assert parallel.stage_env("ingest@x", None, slots, tmp_path)["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in parallel.stage_env(
        "train@x", None, parallel.Slots(2), tmp_path
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert parallel.visible_gpus() == ["2", "3"]
    assert parallel.default_jobs(["2", "3"]) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert parallel.visible_gpus() == []
    assert parallel.default_jobs([]) >= 2


# ---- a small DVC project of shell stages ------------------------------------------------------

STAGE_SCRIPT = r"""
import json, os, sys, time
from pathlib import Path

kind, item = sys.argv[1], sys.argv[2]
name = f"{kind}@{item}"
Path("seen").mkdir(exist_ok=True)
Path(f"seen/{name}.json").write_text(json.dumps({
    "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "omp": os.environ.get("OMP_NUM_THREADS"),
}))
if Path(f"fail-{name}").exists():
    print(f"error: {name}: told to fail", file=sys.stderr)
    sys.exit(3)
meet = Path(f"meet-{name}")
if meet.exists():  # wait (up to 60 s) until the named stage runs too: proof they overlap
    other = meet.read_text().strip()
    deadline = time.monotonic() + 60
    while not Path(f"seen/{other}.json").exists():
        if time.monotonic() > deadline:
            print(f"error: {name}: {other} did not start while {name} ran", file=sys.stderr)
            sys.exit(4)
        time.sleep(0.05)
Path("out").mkdir(exist_ok=True)
Path(f"out/{name}").write_text(name)
"""

SHELL_DVC_YAML = {
    "stages": {
        "ingest": {
            "foreach": ["a", "b"],
            "do": {
                "cmd": "python stage.py ingest ${item}",
                "deps": ["stage.py"],
                "outs": ["out/ingest@${item}"],
            },
        },
        "train": {
            "foreach": ["a", "b"],
            "do": {
                "cmd": "python stage.py train ${item}",
                "deps": ["stage.py", "out/ingest@${item}"],
                "outs": ["out/train@${item}"],
            },
        },
    }
}


def shell_project(tmp_path: Path) -> Path:
    """A git + DVC repository: params.yaml the pipeline accepts, and four shell stages (two
    branches: ingest@a -> train@a, ingest@b -> train@b)."""
    project = tmp_path / "shell"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(TINY))
    (project / "dvc.yaml").write_text(yaml.safe_dump(SHELL_DVC_YAML))
    (project / "stage.py").write_text(STAGE_SCRIPT)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        run(cmd, project)
    return project


def pipeline_run(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "run", *args]
    return subprocess.run(
        cmd,
        cwd=project,
        env={**venv_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def seen(project: Path, stage: str) -> dict:
    return json.loads((project / "seen" / f"{stage}.json").read_text())


@pytest.mark.slow
@pytest.mark.integration
def test_independent_stages_run_at_once_each_on_its_own_gpu(prefect_server, tmp_path):
    project = shell_project(tmp_path)
    # each ingest waits for the other, each train for the other: sequential would fail
    for a, b in (("ingest@a", "ingest@b"), ("train@a", "train@b")):
        (project / f"meet-{a}").write_text(b)
        (project / f"meet-{b}").write_text(a)
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1"}  # two GPUs as the run sees them (torch is not used)
    proc = pipeline_run(project, "-j", "2", env=gpus)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "run: 4 stages, up to 2 at a time (2 GPU(s)" in proc.stdout
    assert "run: 4 stage(s) ran, 0 up to date" in proc.stdout
    # the console: a line per change (not a terminal), every stage running then done
    for stage in ("ingest@a", "ingest@b", "train@a", "train@b"):
        assert f"running  {stage}" in proc.stdout and f"done     {stage}" in proc.stdout
    # GPU stages each got one of the two GPUs; the CPU stages none
    assert sorted(seen(project, s)["cuda"] for s in ("train@a", "train@b")) == ["0", "1"]
    assert seen(project, "ingest@a")["cuda"] == seen(project, "ingest@b")["cuda"] == ""
    # DVC recorded every stage, as `dvc repro` would have
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"ingest@a", "ingest@b", "train@a", "train@b"}
    assert "up to date" in run(["dvc", "status"], project).stdout

    # nothing stale: DVC's check alone; Prefect is not even asked (its URL leads nowhere)
    nowhere = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    again = pipeline_run(project, env=nowhere)
    assert again.returncode == 0, again.stderr
    assert "run: all 4 stages are up to date; nothing to run" in again.stdout

    # one GPU shared by two stages at once (small models): both trains get it, and meet
    with (project / "stage.py").open("a") as script:  # every stage stale again
        script.write("# changed\n")
    (project / "meet-ingest@a").unlink()
    (project / "meet-ingest@b").unlink()
    proc = pipeline_run(
        project, "-j", "3", "--stages-per-gpu", "2", env={"CUDA_VISIBLE_DEVICES": "7"}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert seen(project, "train@a")["cuda"] == seen(project, "train@b")["cuda"] == "7"


@pytest.mark.slow
@pytest.mark.integration
def test_a_failed_stage_stops_its_descendants_and_the_other_branch_finishes(
    prefect_server, tmp_path
):
    project = shell_project(tmp_path)
    (project / "fail-ingest@a").touch()
    proc = pipeline_run(project, "-j", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: run: 1 stage(s) failed:" in proc.stderr
    assert "ingest@a failed" in proc.stderr and "error: ingest@a: told to fail" in proc.stderr
    assert "not run, as a stage they depend on failed: train@a" in proc.stderr
    assert "failed   ingest@a" in proc.stdout and "not run  train@a" in proc.stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"ingest@b", "train@b"}  # the other branch is done
    assert not (project / "seen/train@a.json").exists()

    # bad input stops before DVC or Prefect: one message naming what is wrong
    unknown = pipeline_run(project, "train@c")
    assert unknown.returncode == 2
    assert "error: run: targets: unknown stages ['train@c']" in unknown.stderr
    (project / "params.yaml").write_text("experiments: 3\n")
    bad = pipeline_run(project)
    assert bad.returncode == 2 and "params.yaml is invalid" in bad.stderr


# ---- the real pipeline ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_kill_9_of_a_parallel_run_then_a_rerun_finishes_what_was_left(
    prefect_server, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    project = make_project(tmp_path / "p", LONG)
    checkpoint = project / paths.checkpoint_file("mlp_digits")
    cmd = [sys.executable, "-m", "pipeline", "run", "-j", "2"]
    first = subprocess.Popen(
        cmd,
        cwd=project,
        env=venv_env(),
        start_new_session=True,  # its own process group: the run and its stages die together
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_file(checkpoint, first)  # a few epochs into training
        assert first.poll() is None, "training ended before the kill; make it longer"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    monkeypatch.chdir(project)
    deadline = time.monotonic() + 30
    while locks.running():  # the stage processes die a moment after the run
        assert time.monotonic() < deadline, locks.running()
        time.sleep(0.1)

    again = pipeline_run(project, "-j", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    log = (project / parallel.LOGS / "train@mlp_digits.log").read_text()
    assert "mlp_digits: resumed from epoch" in log, log
    assert "up to date" in run(["dvc", "status"], project).stdout
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dl-pipeline")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    trains = [r.info.status for r in runs if r.info.run_name == "mlp_digits/train"]
    assert sorted(trains) == ["FINISHED", "KILLED"]
    assert json.loads((project / paths.metrics_file("mlp_digits")).read_text())
