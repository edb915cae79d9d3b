"""torchvision's image datasets (MNIST, Fashion-MNIST, KMNIST, CIFAR-10) read from their
standard files under `root`, in torchvision's own layout.

The files are parsed here (IDX for the MNIST family, the pickled CIFAR batches through an
unpickler that only builds plain data and NumPy arrays); `download: true` fetches them with
torchvision's downloader. The official test set stays the test split.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
# source -> (torchvision class, folder under root, files, class names)
SOURCES = {
    "mnist": ("MNIST", "MNIST/raw", MNIST_FILES, [str(d) for d in range(10)]),
    "fashion_mnist": (
        "FashionMNIST",
        "FashionMNIST/raw",
        MNIST_FILES,
        [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
    ),
    "kmnist": (
        "KMNIST",
        "KMNIST/raw",
        MNIST_FILES,
        ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    ),
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        CIFAR_FILES,
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    ),
}


def load(name: str, cfg) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images (N, C, H, W) uint8, labels, meta with a test mask)."""
    tv_class, folder, files, classes = SOURCES[cfg.source]
    folder = Path(cfg.root) / folder
    missing = [f for f in files if not _find(folder, f)]
    if missing and cfg.download:
        _download(name, cfg, tv_class)
        missing = [f for f in files if not _find(folder, f)]
    if missing:
        raise PipelineError(
            f"datasets.{name}: {cfg.source} files missing under {folder}: {', '.join(missing)}; "
            f"set datasets.{name}.download: true (needs network) or copy torchvision's "
            f"{tv_class} files there"
        )
    if cfg.source == "cifar10":
        parts = [_read_cifar(_find(folder, f), name) for f in files]
        is_test = [f == "test_batch" for f in files]
    else:
        parts = [
            (_read_idx(_find(folder, files[i]), name), _read_idx(_find(folder, files[i + 1]), name))
            for i in (0, 2)
        ]
        parts = [(images[:, None], labels) for images, labels in parts]
        is_test = [False, True]
    x = np.concatenate([p[0] for p in parts]).astype(np.uint8)
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    test_mask = np.concatenate([np.full(len(p[1]), t) for p, t in zip(parts, is_test, strict=True)])
    if len(x) != len(y):
        raise PipelineError(f"datasets.{name}: {len(x)} images but {len(y)} labels in {folder}")
    if cfg.limit:  # a seeded subset keeps CPU runs short
        keep = np.sort(np.random.default_rng(0).permutation(len(y))[: cfg.limit])
        x, y, test_mask = x[keep], y[keep], test_mask[keep]
    meta = {
        "source": cfg.source,
        "task": "classification",
        "classes": classes,
        "value_range": [0.0, 255.0],
        "files": str(folder),
    }
    return x, y, {**meta, "test_mask": test_mask}


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download(name: str, cfg, tv_class: str) -> None:
    import torchvision.datasets as tvd

    try:
        for train in (True, False):
            getattr(tvd, tv_class)(cfg.root, train=train, download=True)
    except Exception as err:  # no network, a mirror down, ...
        raise PipelineError(f"datasets.{name}: download of {cfg.source} failed: {err}") from None


def _read_idx(path: Path, name: str) -> np.ndarray:
    """The IDX format: zero bytes, a type code (0x08 = ubyte), the rank, then big-endian dims."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise PipelineError(f"datasets.{name}: {path} is not an unsigned-byte IDX file")
    rank = raw[3]
    dims = np.frombuffer(raw[4 : 4 + 4 * rank], dtype=">u4").astype(int)
    body = np.frombuffer(raw[4 + 4 * rank :], dtype=np.uint8)
    if body.size != np.prod(dims):
        raise PipelineError(
            f"datasets.{name}: {path} is truncated ({body.size} of {int(np.prod(dims))} values)"
        )
    return body.reshape(dims)


class _DataOnly(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and NumPy arrays; refuses anything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _DataOnly(f, encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError) as err:
        raise PipelineError(f"datasets.{name}: {path} is not a CIFAR-10 batch: {err}") from None
    return np.asarray(data, np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels)


def ingest_folder(name: str, cfg, folder: Path) -> dict:
    """torchvision's ImageFolder layout: <path>/<class>/<image>.png|jpg|bmp, decoded (as the
    registered model decodes image files) and resized to `size` by worker processes, written
    as uint8 to `folder`/x.npy a block at a time: memory holds a block, not the dataset.
    Returns meta.json's content.

    Unreadable images are skipped and counted; more than `max_bad_fraction` of them fails.
    """
    from concurrent.futures import ProcessPoolExecutor

    from pipeline import cores
    from pipeline.data.arrays import NpyWriter
    from pipeline.data.preprocessing import IMAGE_SUFFIXES
    from pipeline.progress import CountProgress

    root = Path(cfg.path)
    if not root.is_dir():
        raise PipelineError(f"datasets.{name}.path: folder {root} not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise PipelineError(f"datasets.{name}.path: {root} has no class sub-folders")
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise PipelineError(
                f"datasets.{name}: class folder {root / cls} has no PNG/JPEG/BMP files"
            )
        files += found
        labels += [label] * len(found)
    shape = (cfg.channels, *cfg.size)
    kept, bad = [], []
    workers = cores.own_threads()
    progress = CountProgress(f"ingest@{name}", len(files), "images")
    with (
        NpyWriter(folder / "x.npy", shape, np.uint8, len(files)) as writer,
        ProcessPoolExecutor(workers) if workers > 1 else _InProcess() as pool,
    ):
        step = max(1, BLOCK_BYTES // int(np.prod(shape)))  # images decoded and written at once
        for start in range(0, len(files), step):
            block = files[start : start + step]
            chunks = [block[i::workers] for i in range(workers)]  # bounded: one block
            decoded = list(pool.map(_decode_files, chunks, [(cfg.size, cfg.channels)] * workers))
            images = [None] * len(block)
            for i, (chunk_images, chunk_bad) in enumerate(decoded):
                images[i::workers] = chunk_images
                bad += chunk_bad
            good = [j for j, image in enumerate(images) if image is not None]
            if good:
                writer.write(np.stack([images[j] for j in good]))
            kept += [start + j for j in good]
            progress.update(start + len(block))
    total = len(files)
    if len(bad) > cfg.max_bad_fraction * total:
        raise PipelineError(
            f"datasets.{name}: {len(bad)} of {total} images are unreadable (more than "
            f"max_bad_fraction={cfg.max_bad_fraction}), e.g. {', '.join(bad[:3])}"
        )
    np.save(folder / "y.npy", np.asarray(labels, np.int64)[kept])
    return {
        "source": "image_folder",
        "task": "classification",
        "classes": classes,
        "value_range": [0.0, 255.0],
        "skipped_unreadable": bad,
        "samples": len(kept),
    }


BLOCK_BYTES = 16 << 20  # pixels decoded and written at a time


def _decode_files(files: list[Path], how: tuple) -> tuple[list, list[str]]:
    """(uint8 images, None for an unreadable file; the unreadable files' paths)."""
    from PIL import UnidentifiedImageError

    from pipeline.data.preprocessing import decode_image

    images, bad = [], []
    for file in files:
        try:
            images.append(decode_image(file, *how).astype(np.uint8))
        except (UnidentifiedImageError, OSError, ValueError):
            images.append(None)
            bad.append(str(file))
    return images, bad


class _InProcess:
    """`map` in this process: one core, no worker to start."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def map(self, fn, *iterables):
        return map(fn, *iterables)
