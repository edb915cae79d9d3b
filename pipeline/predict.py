"""`python -m pipeline predict --model URI --input PATH --output preds.csv`: batch inference.

The model comes from MLflow (`models:/<name>@champion`, `models:/<name>/<version>`,
`runs:/<id>/model`); the preprocessing it was trained with is read from its own metadata, so
inputs are given as raw values: a .npy array or a .csv of numbers (one sample per row, in the
dataset's raw units, e.g. 0-16 for digits pixels) or a folder of PNG/JPEG images.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.errors import PipelineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_model(uri: str, tracking_uri: str):
    """The torch model and its preprocessing metadata."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import store_uri

    mlflow.set_tracking_uri(store_uri(tracking_uri))
    try:
        info = mlflow.models.get_model_info(uri)
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except (MlflowException, OSError) as err:
        raise PipelineError(f"--model {uri}: cannot load it from {tracking_uri}: {err}") from None
    prep = info.metadata or {}
    if "input_shape" not in prep:
        raise PipelineError(
            f"--model {uri}: it has no preprocessing metadata (logged before this version of "
            "the pipeline); retrain it with `dvc repro`"
        )
    return model, prep


def read_inputs(path: Path, prep: dict) -> tuple[list[str], np.ndarray]:
    """(names, raw values shaped like the model's input) from a .npy, a .csv or a folder."""
    shape = tuple(prep["input_shape"])
    if path.is_dir():
        return read_images(path, shape)
    if not path.is_file():
        raise PipelineError(f"--input {path}: no such file or folder")
    if path.suffix == ".npy":
        x = np.load(path, allow_pickle=False)
    elif path.suffix == ".csv":
        import pandas as pd

        frame = pd.read_csv(path)
        numeric = frame.select_dtypes("number")
        if numeric.shape[1] != frame.shape[1]:
            frame = pd.read_csv(path, header=None)  # no header row
            numeric = frame.select_dtypes("number")
        x = numeric.to_numpy(np.float32)
    else:
        raise PipelineError(f"--input {path}: expected a .npy or .csv file or an image folder")
    size = int(np.prod(shape))
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != size:
        raise PipelineError(
            f"--input {path}: samples of shape {tuple(x.shape[1:])}; the model takes {shape} "
            f"({size} values per sample)"
        )
    x = x.reshape(len(x), *shape).astype(np.float32)
    top = prep.get("value_range", [0, 1])[1]
    return [str(i) for i in range(len(x))], x / np.float32(top)


def read_images(folder: Path, shape: tuple[int, ...]) -> tuple[list[str], np.ndarray]:
    """Images resized to the model's input, in [0, 1]."""
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PipelineError(f"--input {folder}: no {'/'.join(IMAGE_SUFFIXES)} images in it")
    channels, height, width = shape
    out = []
    for f in files:
        with Image.open(f) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height))
            arr = np.asarray(img, np.float32) / 255.0
        out.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
    return [str(f.relative_to(folder)) for f in files], np.stack(out)


def normalize(x: np.ndarray, prep: dict) -> np.ndarray:
    """The training split's scaling: per channel (images, tables) or one scaler (series)."""
    norm = prep.get("normalization")
    if not norm:
        scaler = prep.get("scaler")
        return x if not scaler else (x - scaler["mean"]) / scaler["std"]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = np.asarray(norm["mean"], np.float32).reshape(shape)
    std = np.asarray(norm["std"], np.float32).reshape(shape)
    return (x - mean) / std


def predict(model, x: np.ndarray, device, batch_size: int = 512) -> np.ndarray:
    import torch

    if isinstance(model, torch.fx.GraphModule):
        # a torch.export graph (MLflow's pt2 format): traced in eval mode on the CPU, where it
        # stays; it refuses .eval()
        device = torch.device("cpu")
    else:
        model = model.to(device).eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out = model(torch.as_tensor(x[start : start + batch_size], device=device))
            outs.append((out[0] if isinstance(out, tuple) else out).cpu())
    return torch.cat(outs).numpy()


def rows_csv(names: list[str], outputs: np.ndarray, prep: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if prep.get("task") == "classification":
        classes = prep["classes"]
        exp = np.exp(outputs - outputs.max(1, keepdims=True))
        probs = exp / exp.sum(1, keepdims=True)
        writer.writerow(["input", "predicted", "confidence", *[f"p_{c}" for c in classes]])
        for name, p in zip(names, probs, strict=True):
            k = int(p.argmax())
            writer.writerow([name, classes[k], f"{p[k]:.6f}", *[f"{v:.6f}" for v in p]])
    else:
        flat = outputs.reshape(len(outputs), -1)
        scaler = prep.get("scaler")
        if scaler:  # back to the target's own units
            flat = flat * scaler["std"] + scaler["mean"]
        writer.writerow(["input", *[f"prediction_{i}" for i in range(flat.shape[1])]])
        for name, row in zip(names, flat, strict=True):
            writer.writerow([name, *[f"{v:.6g}" for v in row]])
    return buf.getvalue()


def run(model_uri: str, input_path: str, output: str, tracking_uri: str, device: str) -> int:
    from pipeline.engine import select_device

    model, prep = load_model(model_uri, tracking_uri)
    if prep.get("task") not in ("classification", "regression", "forecasting"):
        raise PipelineError(
            f"--model {model_uri}: predict serves classification and regression "
            f"models; this one is a {prep.get('task')} model"
        )
    names, x = read_inputs(Path(input_path), prep)
    outputs = predict(model, normalize(x, prep), select_device(device))
    atomic.write_text(output, rows_csv(names, outputs, prep))
    return len(names)
