"""Determinism: same seed, same weights; `train.deterministic` checked before the first epoch;
`python -m pipeline verify-determinism` runs train and evaluate twice and diffs their outputs."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from pipeline import engine
from pipeline.errors import PipelineError
from tests.conftest import TINY, make_project, run
from tests.test_engine import fit, setup


def test_two_runs_with_the_same_seed_give_identical_weights_and_metrics():
    results = []
    for _ in range(2):
        model, tr, va, cfg = setup(seed=7)
        history = fit(model, tr, va, cfg).history
        results.append(({k: v.clone() for k, v in model.state_dict().items()}, history))
    (first, history1), (second, history2) = results
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert history1 == history2


class CudaOnlyScatter(nn.Module):
    """Stands in for an op with no deterministic kernel (CUDA's index_add_ and friends): it
    refuses the way torch does when deterministic algorithms are on."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if torch.are_deterministic_algorithms_enabled():
            raise RuntimeError(
                "scatter_add_cuda_kernel does not have a deterministic implementation, but "
                "you set 'torch.use_deterministic_algorithms(True)'"
            )
        return self.inner(x)


def test_an_op_without_a_deterministic_kernel_is_reported_before_training():
    from pipeline.tasks.predictive import Classification
    from tests.test_engine import SCHEMA

    model, tr, va, cfg = setup()
    model = CudaOnlyScatter(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    engine.set_deterministic(True)
    try:
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        with pytest.raises(PipelineError, match=r"train\.deterministic: scatter_add_cuda_kernel"):
            engine.check_deterministic(
                model, tr, Classification(cfg, SCHEMA), "train.deterministic"
            )
    finally:
        engine.set_deterministic(False)
    assert torch.equal(torch.get_rng_state(), rng)  # nothing drawn for the real run
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.slow
@pytest.mark.integration
def test_verify_determinism_command_on_a_real_project(tmp_path):
    raw = {**TINY, "defaults": {**TINY["defaults"], "train": {"epochs": 3, "deterministic": True}}}
    project = make_project(tmp_path / "p", raw)
    run(["dvc", "repro", "preprocess@digits", "tune@mlp_digits"], project)
    before = sorted(p.relative_to(project) for p in project.rglob("*") if ".git" not in p.parts)
    out = run(["python", "-m", "pipeline", "verify-determinism", "mlp_digits"], project).stdout
    # every output dvc.yaml declares for train@ and evaluate@ (model, checkpoint, history,
    # metrics, figures, ...) compared by md5; the run records are named as differing by design
    assert (
        "mlp_digits: deterministic: 11 output files of train@mlp_digits and "
        "evaluate@mlp_digits are bit-identical"
    ) in out
    assert "artifacts/mlp_digits/train.json differs by design: wall time" in out
    # run in scratch folders with tracking off: the project and its MLflow store are as before
    after = sorted(p.relative_to(project) for p in project.rglob("*") if ".git" not in p.parts)
    assert after == before
    missing = run(["python", "-m", "pipeline", "verify-determinism", "nope"], project, check=False)
    assert missing.returncode == 2 and "'nope' is not in params.yaml" in missing.stderr


@pytest.mark.slow  # stage processes on real data: make test, not test-fast
def test_retraining_writes_the_same_model_and_checkpoint_bytes(tmp_path):
    """DVC compares outputs by md5: the same training (seed, data, params) must write the same
    files, or every retrained model looks changed."""
    import hashlib

    from pipeline import paths
    from tests.conftest import run_stage

    project = make_project(tmp_path / "project", TINY)
    for stage in ("ingest", "preprocess"):
        run_stage(project, stage, "digits")
    outputs = [paths.model_file("mlp_digits"), paths.checkpoint_file("mlp_digits")]
    digests = []
    for _ in range(2):
        for path in outputs:
            (project / path).unlink(missing_ok=True)
        run_stage(project, "train", "mlp_digits")
        digests.append([hashlib.md5((project / p).read_bytes()).hexdigest() for p in outputs])
    assert digests[0] == digests[1]


def test_verify_names_the_files_that_differ():
    from pipeline.verify import differences

    first = {"a/model.pt": "1", "a/train.json": "2", "r/metrics.json": "3", "r/plots/x.png": "4"}
    second = {"a/model.pt": "9", "a/train.json": "8", "r/metrics.json": "3"}
    assert differences(first, second) == (["a/model.pt", "r/plots/x.png"], ["a/train.json"])
