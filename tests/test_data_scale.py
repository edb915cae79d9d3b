"""Splits larger than the memory budget: read from disk in batches by DataLoader workers,
with the same batches and so the same results as in memory; block-by-block files."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.common import read_test_metrics
from pipeline import paths
from pipeline.config import load_params
from pipeline.data import datasets
from pipeline.data.arrays import NpyRows, NpyWriter
from tests.conftest import ROOT, TINY, tiny_model, write_params


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


BATCHES_MATCH = """
import sys
import numpy as np, torch
from pipeline.data.arrays import NpyRows
from pipeline.engine import Batches

folder, workers = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.random((203, 2, 3), dtype=np.float32)
y = rng.integers(0, 3, 203)
np.save(f"{folder}/x.npy", x)
for weighted in (False, True):
    for shard in ((0, 1), (0, 2), (1, 2)):
        weights = np.bincount(y)[y] ** -1.0 if weighted else None
        common = dict(device="cpu", shuffle=True, seed=7, weights=weights, shard=shard)
        memory = Batches(x, y, 16, **common)
        disk = Batches(NpyRows(f"{folder}/x.npy"), y, 16, workers=workers, **common)
        assert len(memory) == len(disk) and disk.streamed and not memory.streamed
        for _epoch in range(2):
            pairs = list(zip(memory, disk, strict=True))
            assert len(pairs) == len(memory)
            for (mx, my), (dx, dy) in pairs:
                assert torch.equal(mx, dx) and torch.equal(my, dy), (weighted, shard)
        assert torch.equal(disk.head(3), memory.head(3))

# augmented: each batch with its own seed, applied where the batch is read (the workers)
from pipeline import augment
from pipeline.params.training import TrainParams

steps = TrainParams.model_validate(
    {"augment": [{"name": "random_rotation", "args": {"degrees": 30}},
                 {"name": "random_erasing", "args": {"p": 0.5}}]}
).augment
images = rng.random((203, 1, 8, 8), dtype=np.float32)
np.save(f"{folder}/images.npy", images)
norm = {"mean": [0.5], "std": [0.3]}
common = dict(device="cpu", shuffle=True, seed=7, transform=augment.build(steps, norm))
memory, again = Batches(images, y, 16, **common), Batches(images, y, 16, **common)
disk = Batches(NpyRows(f"{folder}/images.npy"), y, 16, workers=workers, **common)
plain = Batches(images, y, 16, device="cpu", shuffle=True, seed=7)
epochs = []
for _epoch in range(2):
    torch.manual_seed(_epoch)  # the global RNG plays no part in the draws
    batches = list(zip(memory, disk, again, plain, strict=True))
    for (mx, my), (dx, dy), (ax, _), (px, py) in batches:
        assert torch.equal(mx, dx) and torch.equal(my, dy) and torch.equal(mx, ax)
        if _epoch == 0:  # the order of the first epoch is drawn before any seed
            assert torch.equal(my, py) and not torch.equal(mx, px)  # augmented
    epochs.append(torch.cat([b[0][0] for b in batches]))
assert not torch.equal(*epochs)  # a new draw each epoch
print("same batches")
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_read_from_disk_are_the_in_memory_batches(tmp_path, workers):
    """Every batch of two epochs, for DDP workers' shards too and with weighted sampling
    (repeated rows), and augmented batches (augmented by the workers): the disk path yields
    exactly what the in-memory path yields, read by the process itself or by DataLoader
    workers. In a fresh process, as a stage is: DataLoader
    workers forked from this test process, after the other tests it ran, can exit 1."""
    proc = subprocess.run(
        [sys.executable, "-c", BATCHES_MATCH, str(tmp_path), str(workers)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "same batches", proc.stderr


def _train(project, monkeypatch, **data) -> tuple[dict, object]:
    """Train the tiny MLP on digits in `project`; (its weights, the train Batches)."""
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


def test_a_split_read_from_disk_trains_to_the_same_weights_as_in_memory(tmp_path, monkeypatch):
    """Forced onto the disk path (budget 0 MB), shuffled batches and all: bit-identical.
    (With DataLoader workers: data_bench, in a process of its own, compares the weights.)"""
    in_memory, batches = _train(tmp_path, monkeypatch)
    assert not batches.streamed  # the default budget holds digits
    from_disk, batches = _train(tmp_path, monkeypatch, in_memory_max_mb=0, loader_workers=0)
    assert batches.streamed and isinstance(batches.x, NpyRows)
    for key in in_memory:
        torch.testing.assert_close(from_disk[key], in_memory[key], rtol=0, atol=0, msg=key)


def write_photos(root, n: int, size: int, classes=("dark", "light")) -> None:
    """`n` PNG photos of `size`x`size` RGB pixels whose brightness tells the class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for j in range(n // len(classes)):
            pixels = rng.normal(90 + 70 * i, 40, (size, size, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{j:06d}.png", compress_level=1)


HEAP_PROBE = """
import sys
import numpy as np
from pipeline.data import datasets

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

if sys.argv[1] == "disk":
    datasets.load_split("ds", "train", on_disk=True)
a = np.ones(30 << 20, np.uint8)  # freed: glibc's default raises its threshold to 30 MB,
del a
b = np.ones(20 << 20, np.uint8)  # so this batch-sized block would come from the heap
pin = np.ones(1 << 10, np.uint8)  # a later small block keeps the heap's top in use
before = rss_mb()
del b
print(before - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_process_reading_a_split_from_disk_gives_freed_batches_back(tmp_path):
    """Batches freed by a process that streams a split go back to the system at once: under
    glibc's default they stay in its heap, where the train stage's peak grew by hundreds of
    MB from run to run at 330,000 photos."""
    split = tmp_path / paths.split_dir("ds", "train")
    split.mkdir(parents=True)
    np.save(split / "x.npy", np.zeros((4, 3), np.float32))
    np.save(split / "y.npy", np.zeros(4, np.int64))
    returned = {}
    for mode in ("memory", "disk"):
        out = subprocess.run(
            [sys.executable, "-c", HEAP_PROBE, mode],
            cwd=tmp_path,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
        returned[mode] = float(out.stdout)
    assert returned["disk"] >= 19, returned  # the 20 MB block went back when freed
    assert returned["memory"] < 1, returned  # the default kept it: the probe tells them apart


def test_image_folder_decoded_by_worker_processes_as_in_one(tmp_path, monkeypatch):
    """Two decoding processes write the same array, in file order, skipping the same file."""
    from pipeline.params.datasets import ImageFolderDataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pipeline.data.vision.BLOCK_BYTES", 5 * 3 * 16 * 16)  # 5 a block
    write_photos(tmp_path / "photos", 40, 20)
    (tmp_path / "photos/light/broken.png").write_bytes(b"not an image")
    cfg = ImageFolderDataset.model_validate(
        {"source": "image_folder", "path": "photos", "size": [16, 16], "max_bad_fraction": 0.1}
    )
    raw = {}
    for threads in ("1", "2"):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        datasets.ingest(f"p{threads}", cfg)
        raw[threads] = datasets.read_raw(f"p{threads}")
    (x1, y1, meta1), (x2, y2, meta2) = raw["1"], raw["2"]
    assert x1.dtype == np.uint8 and x1.shape == (40, 3, 16, 16)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and meta1 == meta2
    assert meta1["skipped_unreadable"] == ["photos/light/broken.png"]
    assert y1.tolist() == [0] * 20 + [1] * 20


PHOTOS = {
    "datasets": {
        name: {"source": "image_folder", "path": name, "size": [64, 64]}
        for name in ("photos", "few")
    },
    "defaults": {
        **TINY["defaults"],
        "model": tiny_model("cnn"),
        "train": {"epochs": 1, "batch_size": 256},
        # under the smaller test split (400 photos), so both evaluate the same batches: a
        # batch's activations are most of the peak (512 photos: 228 MB), not the data
        "evaluate": {"batch_size": 256},
        "data": {"in_memory_max_mb": 1},
    },
    "experiments": {f"cnn_{name}": {"dataset": name} for name in ("photos", "few")},
}


def peak_rss_mb(cmd: list[str], cwd, env=None) -> float:
    """Run `cmd` to the end; the peak resident memory of the largest process it started."""
    import json
    import subprocess

    code = (
        "import json, resource, subprocess, sys;"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "print(json.dumps([r.returncode, r.stderr[-3000:],"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *cmd], cwd=cwd, env=env, capture_output=True, text=True
    )
    code, err, kb = json.loads(out.stdout.splitlines()[-1])
    assert code == 0, err
    return kb / 1024


@pytest.mark.slow
@pytest.mark.integration
def test_a_dataset_larger_than_the_budget_keeps_every_stage_small(tmp_path):
    """8000 64x64 photos (375 MB of processed inputs) against 2000 (94 MB), with a budget of
    1 MB: every stage's peak memory grows by a small part of the added data, and training
    from disk stays under training in memory by most of the train+val inputs."""
    import os

    from tests.conftest import make_project

    project = make_project(tmp_path / "p", PHOTOS)
    write_photos(project / "photos", 8000, 64)
    write_photos(project / "few", 2000, 64)
    env = {**os.environ, "MPLBACKEND": "Agg"}

    def peak(stage: str, target: str) -> float:
        cmd = [sys.executable, "-m", f"pipeline.stages.{stage}", target]
        return peak_rss_mb(cmd, project, env)

    stages = [("ingest", ""), ("preprocess", ""), ("train", "cnn_"), ("evaluate", "cnn_")]
    large = {stage: peak(stage, f"{prefix}photos") for stage, prefix in stages}
    small = {stage: peak(stage, f"{prefix}few") for stage, prefix in stages}
    inputs_mb = 8000 * 3 * 64 * 64 * 4 / 2**20  # float32 pixels of every split
    added_mb = inputs_mb * (8000 - 2000) / 8000
    raw = PHOTOS | {"defaults": PHOTOS["defaults"] | {"data": {}}}  # the default budget
    write_params(project / "params.yaml", raw)
    in_memory = peak("train", "cnn_photos")
    print({"8000": large, "2000": small, "train in memory": in_memory})
    for stage, mb in large.items():
        assert mb - small[stage] < added_mb / 4, (stage, mb, small[stage])
    assert in_memory - large["train"] > inputs_mb * 0.85 / 2, (in_memory, large["train"])


@pytest.mark.slow
@pytest.mark.integration
def test_kill_9_while_preprocess_writes_leaves_nothing_half_written(tmp_path):
    """The split files are DVC outputs written in a temporary folder: kill -9 mid-write
    leaves no output and nothing new in DVC's cache; the next `dvc repro` cleans up and
    writes them whole."""
    import os
    import signal
    import subprocess
    import time

    from pipeline.data.store import content_hash
    from tests.conftest import make_project, run, venv_env

    raw = copy.deepcopy(PHOTOS)
    del raw["datasets"]["few"], raw["experiments"]["cnn_few"]
    project = make_project(tmp_path / "p", raw)
    write_photos(project / "photos", 6000, 64)
    run(["dvc", "repro", "ingest@photos"], project)
    cache = project / ".dvc" / "cache"
    cached = sorted(p for p in cache.rglob("*") if p.is_file())
    proc = subprocess.Popen(
        ["dvc", "repro", "preprocess@photos"],
        cwd=project,
        env=venv_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    try:
        while not list((project / "data/processed").glob(".photos.*.tmp/train/x.npy")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (project / paths.processed_dir("photos")).exists()
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == cached
    assert "preprocess@photos" in run(["dvc", "status"], project).stdout

    run(["dvc", "repro", "preprocess@photos"], project)
    assert not list((project / "data/processed").glob(".photos.*.tmp"))  # cleaned up
    schema = json.loads((project / paths.schema_file("photos")).read_text())
    assert content_hash(project / paths.processed_dir("photos"))[0] == schema["content_hash"]
    x = np.load(project / paths.split_dir("photos", "train") / "x.npy", mmap_mode="r")
    assert x.shape == (schema["counts"]["train"], 3, 64, 64)
    assert "up to date" in run(["dvc", "status", "preprocess@photos"], project).stdout


@pytest.mark.slow
@pytest.mark.integration
def test_dvc_repro_from_disk_and_in_memory_gives_the_same_model_and_metrics(tmp_path):
    """Two experiments alike but for the memory budget: `check` names the path each takes,
    and the real pipeline trains and evaluates them to the same weights and test metrics."""
    from pipeline.engine import load_tensors
    from tests.conftest import make_project, run

    raw = copy.deepcopy(TINY)
    raw["experiments"]["mlp_disk"] = {"dataset": "digits", "data": {"in_memory_max_mb": 0}}
    project = make_project(tmp_path / "p", raw)
    check = run([sys.executable, "-m", "pipeline", "check"], project).stdout
    assert "mlp_digits: in memory" in check, check
    assert "mlp_disk: from disk, read by the training process (budget 0.0 MB)" in check, check
    run(["dvc", "repro"], project)
    metrics = {e: read_test_metrics(project, e) for e in ("mlp_digits", "mlp_disk")}
    assert metrics["mlp_disk"] == metrics["mlp_digits"] and "test/accuracy" in metrics["mlp_disk"]
    weights = {e: load_tensors(project / paths.model_file(e))["state_dict"] for e in metrics}
    for key, value in weights["mlp_digits"].items():
        torch.testing.assert_close(weights["mlp_disk"][key], value, rtol=0, atol=0, msg=key)


def test_the_judge_reads_splits_over_the_budget_from_disk_to_the_same_model(tmp_path, monkeypatch):
    """judge@ picks each split's path by `defaults.data`'s budget, as training does: forced
    onto the disk path (budget 0 MB) it trains the same weights to the same test accuracy."""
    from pipeline.stages import judge

    monkeypatch.chdir(tmp_path)
    raw = copy.deepcopy(TINY)
    raw["defaults"]["tracking"] = {"enabled": False}
    raw["defaults"]["train"] = {"epochs": 1}
    raw["experiments"] = {"vae_digits": {"dataset": "digits", "model": tiny_model("vae")}}
    params = load_params(write_params(tmp_path / "params.yaml", raw))
    datasets.ingest("digits", params.datasets["digits"])
    datasets.preprocess("digits", params.datasets["digits"])
    results, paths_taken, load_split = {}, [], datasets.load_split

    def spy(name, split, on_disk=False):
        paths_taken.append((split, on_disk))
        return load_split(name, split, on_disk)

    monkeypatch.setattr(datasets, "load_split", spy)
    for budget in (None, 0):
        raw["defaults"]["data"] = {"in_memory_max_mb": budget, "loader_workers": 0}
        params = load_params(write_params(tmp_path / "params.yaml", raw))
        info = judge.run(params, "digits")
        weights = torch.load(paths.judge_model_file("digits"), weights_only=True)
        results[budget] = info, weights
    splits = ["train", "val", "test"]
    assert paths_taken == [(s, False) for s in splits] + [(s, True) for s in splits]
    (memory, memory_weights), (disk, disk_weights) = results[None], results[0]
    assert memory["applicable"] and memory["test/accuracy"] == disk["test/accuracy"]
    for key, value in memory_weights.items():
        torch.testing.assert_close(disk_weights[key], value, rtol=0, atol=0, msg=key)
