"""A DVC remote: `dvc push` from one clone, `dvc pull` into a fresh one restores every data
set, model and report byte for byte, and `dvc repro` there has nothing to do."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import TINY, make_project, run

pytestmark = [pytest.mark.slow, pytest.mark.integration]

OUTPUTS = ("data", "artifacts", "reports")


def digests(project: Path) -> dict[str, str]:
    """sha256 of every pipeline output file, by path relative to the project (the stages'
    lock files under artifacts/.locks are not outputs)."""
    return {
        str(path.relative_to(project)): hashlib.sha256(path.read_bytes()).hexdigest()
        for top in OUTPUTS
        for path in sorted((project / top).rglob("*"))
        if path.is_file() and path.name != ".gitignore" and ".locks" not in path.parts
    }


def test_push_then_pull_into_a_fresh_clone_restores_everything(tmp_path):
    origin = make_project(tmp_path / "origin", TINY)
    run(["dvc", "repro"], origin)
    remote = tmp_path / "remote"  # a local folder stands in for s3://, gs:// or ssh://
    run(["dvc", "remote", "add", "--default", "storage", str(remote)], origin)
    pushed = run(["dvc", "push"], origin)
    assert "pushed" in pushed.stdout
    run(["git", "add", "-A"], origin)
    run(["git", "commit", "-qm", "pipeline results"], origin)
    expected = digests(origin)
    assert any(p.endswith("model.pt") for p in expected)
    assert any(p.endswith("checkpoint.pt") for p in expected)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    assert not (clone / "data").exists()  # git holds only dvc.lock and the code
    run(["dvc", "pull"], clone)
    assert digests(clone) == expected
    assert "up to date" in run(["dvc", "status"], clone).stdout
    repro = run(["dvc", "repro"], clone)
    assert "Running stage" not in repro.stdout, repro.stdout
