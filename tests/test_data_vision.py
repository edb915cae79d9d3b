"""torchvision datasets read from tiny files the tests write in the real on-disk formats:
IDX for the MNIST family (plain and gzipped) and pickled CIFAR-10 batches."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from pipeline import paths
from pipeline.data import datasets
from pipeline.errors import PipelineError
from pipeline.params.datasets import TorchvisionDataset


def write_idx(path, array: np.ndarray, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    opener = gzip.open if gz else open
    with opener(str(path) + (".gz" if gz else ""), "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_mnist(root, folder="MNIST", n_train=40, n_test=20, gz=False):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)


def fake_cifar(root, per_batch=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
            b"labels": list(np.arange(per_batch) % 10),
            b"batch_label": name.encode(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cfg(source, **kw):
    return TorchvisionDataset.model_validate(
        {"source": source, "root": "ext", "split": {"val": 0.25}, **kw}
    )


@pytest.mark.parametrize(
    ("source", "folder", "gz"),
    [
        ("mnist", "MNIST", False),
        ("fashion_mnist", "FashionMNIST", True),
        ("kmnist", "KMNIST", False),
    ],
)
def test_mnist_family_reads_idx_files_and_keeps_the_official_test_set(workdir, source, folder, gz):
    fake_mnist(workdir / "ext", folder, gz=gz)
    datasets.ingest("imgs", cfg(source))
    datasets.preprocess("imgs", cfg(source))
    schema = datasets.load_schema("imgs")
    assert schema["input_shape"] == [1, 28, 28] and schema["num_classes"] == 10
    assert schema["counts"] == {"train": 30, "val": 10, "test": 20}
    x, y = datasets.load_split("imgs", "test")
    assert np.array_equal(y, np.arange(20) % 10)  # the t10k files, in order


def test_cifar10_reads_pickled_batches(workdir):
    fake_cifar(workdir / "ext")
    datasets.ingest("cifar", cfg("cifar10"))
    datasets.preprocess("cifar", cfg("cifar10"))
    schema = datasets.load_schema("cifar")
    assert schema["input_shape"] == [3, 32, 32] and schema["classes"][0] == "airplane"
    assert schema["counts"]["test"] == 10 and sum(schema["counts"].values()) == 60
    assert len(schema["normalization"]["mean"]) == 3  # per channel, from train


def test_missing_files_name_the_path_and_how_to_get_them(workdir):
    with pytest.raises(PipelineError) as info:
        datasets.ingest("m", cfg("mnist"))
    message = str(info.value)
    assert "mnist files missing under ext/MNIST/raw: train-images-idx3-ubyte" in message
    assert "download: true" in message
    assert not paths.raw_dir("m").exists()


def test_corrupt_files_are_clear_errors(workdir):
    fake_mnist(workdir / "ext")
    (workdir / "ext/MNIST/raw/t10k-labels-idx1-ubyte").write_bytes(b"not idx at all")
    with pytest.raises(PipelineError, match="is not an unsigned-byte IDX file"):
        datasets.ingest("m", cfg("mnist"))
    fake_cifar(workdir / "ext")
    with open(workdir / "ext/cifar-10-batches-py/test_batch", "wb") as f:
        pickle.dump({b"data": __import__("os").getcwd}, f)  # code, not data
    with pytest.raises(PipelineError, match="refusing to load"):
        datasets.ingest("c", cfg("cifar10"))


def test_limit_takes_a_seeded_subset(workdir):
    fake_mnist(workdir / "ext")
    datasets.ingest("m", cfg("mnist", limit=30))
    assert datasets.raw_meta("m")["samples"] == 30


def image_folder(root, per_class=8, classes=("cat", "dog", "owl")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for j in range(per_class):
            pixels = rng.integers(0, 256, (20, 24, 3)).astype(np.uint8)
            suffix = ".jpg" if j % 2 else ".png"
            Image.fromarray(pixels).save(root / cls / f"{i}_{j}{suffix}")


def folder_cfg(**kw):
    from pipeline.params.datasets import ImageFolderDataset

    return ImageFolderDataset.model_validate(
        {"source": "image_folder", "path": "imgs", "size": [16, 16], **kw}
    )


def test_image_folder_resizes_png_and_jpeg_per_class(workdir):
    image_folder(workdir / "imgs")
    datasets.ingest("f", folder_cfg())
    datasets.preprocess("f", folder_cfg())
    schema = datasets.load_schema("f")
    assert schema["classes"] == ["cat", "dog", "owl"] and schema["input_shape"] == [3, 16, 16]
    assert sum(schema["counts"].values()) == 24
    grey = folder_cfg(channels=1)
    datasets.ingest("g", grey)
    assert datasets.read_raw("g")[0].shape == (24, 1, 16, 16)


def test_unreadable_images_are_skipped_counted_or_fail_past_the_limit(workdir):
    image_folder(workdir / "imgs")
    (workdir / "imgs/dog/broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(PipelineError, match=r"1 of 25 images are unreadable .*broken.png"):
        datasets.ingest("f", folder_cfg())
    assert not paths.raw_dir("f").exists()
    datasets.ingest("f", folder_cfg(max_bad_fraction=0.1))
    meta = datasets.raw_meta("f")
    assert meta["samples"] == 24 and meta["skipped_unreadable"] == ["imgs/dog/broken.png"]


def test_folder_errors_name_the_path_or_class(workdir):
    with pytest.raises(PipelineError, match="folder imgs not found"):
        datasets.ingest("f", folder_cfg())
    (workdir / "imgs").mkdir()
    with pytest.raises(PipelineError, match="imgs has no class sub-folders"):
        datasets.ingest("f", folder_cfg())
    (workdir / "imgs/empty").mkdir()
    with pytest.raises(PipelineError, match="class folder imgs/empty has no PNG/JPEG/BMP files"):
        datasets.ingest("f", folder_cfg())


def test_a_class_too_small_to_stratify_is_named(workdir):
    image_folder(workdir / "imgs")
    image_folder(workdir / "imgs", per_class=2, classes=("rare",))
    datasets.ingest("f", folder_cfg())
    with pytest.raises(PipelineError, match=r"class\(es\) 'rare' \(2\) have fewer than 3"):
        datasets.preprocess("f", folder_cfg())
    assert not paths.processed_dir("f").exists()
