"""The CUDA path, run by `make test-gpu` and benchmarks/gpu_check.sh on a machine with a GPU.

Every test here is marked `gpu` and skipped when no CUDA device is visible. With
PIPELINE_TEST_DEVICE=cpu the tests that also mean something on CPU run there instead (the
check script's dry run, which is how `make test` keeps these tests working on machines
without a GPU); the CUDA-only ones (host syncs, the pinned tuning worker) still skip.
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    """CUDA, or CPU when PIPELINE_TEST_DEVICE=cpu; skips the test without either."""
    if os.environ.get("PIPELINE_TEST_DEVICE") == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip(
            "needs a CUDA device, and none is visible: it runs on a GPU machine (make test-gpu, "
            "benchmarks/gpu_check.sh); PIPELINE_TEST_DEVICE=cpu runs it on the CPU instead"
        )
    return torch.device("cuda")


@pytest.fixture
def cuda(device) -> torch.device:
    """A test about CUDA itself: skipped on CPU."""
    if device.type != "cuda":
        pytest.skip(
            "checks CUDA's own behaviour (host syncs, GPU pinning), which the CPU has no "
            "counterpart of; it runs on a GPU machine"
        )
    return device
