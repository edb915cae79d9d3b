"""Every pipeline process takes its share of the cores, never all of them beside another one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline import cores
from tests.conftest import ROOT, TINY, make_project, run_stage

# a registered pipeline process that holds its place until killed
HOLDER = (
    "import time; from pipeline import cores; cores.join(); print('in', flush=True); "
    "time.sleep(600)"
)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A registry of its own, and none of the thread settings of the test process."""
    monkeypatch.setattr(cores, "REGISTRY", tmp_path / "registry")
    monkeypatch.setattr(cores, "_dynamic", False)
    for name in (*cores.THREAD_VARS, cores.SHARED):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "registry"


def holder(env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "in"
    return proc


def test_registered_processes_split_the_cores_and_the_dead_give_theirs_back(registry, monkeypatch):
    monkeypatch.setattr(cores, "available", lambda: 8)
    assert cores.join() == 8  # alone
    assert os.environ["OMP_NUM_THREADS"] == "8" and os.environ[cores.SHARED] == "1"
    others = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        for proc in others:
            (registry / str(proc.pid)).touch()
        assert cores.share() == 2  # 4 live processes
        others[0].kill()
        others[0].wait()
        assert cores.share() == 2  # 8 // 3
        assert not (registry / str(others[0].pid)).exists()  # a dead one's file is removed
    finally:
        for proc in others:
            proc.kill()
            proc.wait()
    assert cores.share() == 8


def test_a_fixed_thread_count_is_kept_and_children_split_it(registry, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert cores.join() == 6
    assert not registry.exists()  # a fixed process does not register
    env = cores.for_children(4)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env[cores.SHARED] == ""  # the children's count is fixed, not inherited as a share
    assert cores.for_children(2)["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's nested form: the first level
    assert cores.join() == 4 and cores.for_children(2)["OMP_NUM_THREADS"] == "2"


def test_a_child_of_a_registered_process_takes_a_share_not_a_fixed_count(
    registry, monkeypatch, tmp_path
):
    monkeypatch.setattr(cores, "available", lambda: 4)
    cores.join()  # this process now has OMP_NUM_THREADS=4, as a share
    child_tmp = tmp_path / "child"
    child_tmp.mkdir()
    proc = holder({**os.environ, "TMPDIR": str(child_tmp)})  # its registry is under TMPDIR
    try:
        assert [p.name for p in child_tmp.glob("dl-pipeline-*/*")] == [str(proc.pid)]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_a_train_stage_beside_another_pipeline_process_takes_half_the_cores(tmp_path):
    """A real train stage, started while another registered process runs, trains with
    cores // 2 threads (the share it wrote in its summary) and not with every core."""
    env = {k: v for k, v in os.environ.items() if k not in (*cores.THREAD_VARS, cores.SHARED)}
    env["TMPDIR"] = str(tmp_path)  # a registry of this test's own
    project = make_project(tmp_path / "project", TINY)
    for stage in ("ingest", "preprocess"):
        run_stage(project, stage, "digits", env=env)
    expected = max(1, cores.available() // 2)
    other = holder(env)
    try:
        run_stage(project, "train", "mlp_digits", env=env)
    finally:
        other.kill()
        other.wait()
    summary = json.loads((project / "artifacts/mlp_digits/train.json").read_text())
    assert summary["threads"] == expected
    # the holder is gone: a stage alone takes every core again
    run_stage(project, "train", "mlp_digits", env=env)
    summary = json.loads((project / "artifacts/mlp_digits/train.json").read_text())
    assert summary["threads"] == cores.available()
