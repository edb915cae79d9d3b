"""Splits larger than the memory budget: read from disk in batches by DataLoader workers,
with the same batches and so the same results as in memory; block-by-block files."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import paths
from pipeline.config import load_params
from pipeline.data import datasets
from pipeline.data.arrays import NpyRows, NpyWriter
from tests.conftest import TINY, write_params


def test_npy_written_in_blocks_reads_back_by_rows_and_maps(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((1000, 3, 4), dtype=np.float32)
    with NpyWriter(tmp_path / "a.npy", (3, 4), np.float32, rows=10**6) as writer:
        for start in range(0, 990, 100):  # fewer rows than reserved: the header says 990
            writer.write(data[start : min(start + 100, 990)])
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert mapped.shape == (990, 3, 4) and np.array_equal(mapped, data[:990])
    rows = NpyRows(tmp_path / "a.npy")
    index = rng.integers(0, 990, 500)  # any order, repeats (weighted sampling)
    assert np.array_equal(rows.take(index), data[index])
    assert np.array_equal(rows[5:17], data[5:17]) and rows.nbytes == 990 * 48
    with pytest.raises(ValueError, match=r"rows of shape \(4, 3\) \(expected \(3, 4\)\)"):
        NpyWriter(tmp_path / "b.npy", (3, 4), np.float32, rows=1).write(data[:1].reshape(1, 4, 3))


def _train(project, monkeypatch, **data) -> tuple[dict, object]:
    """Train the tiny MLP on digits in `project`; (its weights, the train Batches)."""
    import copy

    from pipeline import engine
    from pipeline.experiment import prepare

    monkeypatch.chdir(project)
    raw = copy.deepcopy(TINY)
    raw["defaults"] |= {"data": data, "train": {"epochs": 3, "batch_size": 32}}
    params = load_params(write_params(project / "params.yaml", raw))
    exp = params.experiments["mlp_digits"]
    if not paths.schema_file("digits").is_file():
        cfg = params.datasets["digits"]
        datasets.ingest("digits", cfg)
        datasets.preprocess("digits", cfg)
    prep = prepare(exp, "mlp_digits")
    engine.fit(prep.model, prep.train, prep.val, exp.train, prep.task)
    return {k: v.clone() for k, v in prep.model.state_dict().items()}, prep.train


@pytest.mark.parametrize("workers", [0, 2])
def test_a_split_read_from_disk_trains_to_the_same_weights_as_in_memory(
    tmp_path, monkeypatch, workers
):
    """Forced onto the disk path (budget 0 MB), shuffled batches and all: bit-identical."""
    import torch

    in_memory, batches = _train(tmp_path, monkeypatch)
    assert not batches.streamed  # the default budget holds digits
    from_disk, batches = _train(tmp_path, monkeypatch, in_memory_max_mb=0, loader_workers=workers)
    assert batches.streamed and isinstance(batches.x, NpyRows)
    for key in in_memory:
        torch.testing.assert_close(from_disk[key], in_memory[key], rtol=0, atol=0, msg=key)
