"""The registered model: an MLflow pyfunc that takes raw inputs.

It carries the trained weights (the model.pt dict train writes) and the dataset's fitted
preprocessor (preprocessor.json), and ships this file, pipeline/data/preprocessing.py and the
`models` package as code, so `mlflow.pyfunc.load_model(...)` and `mlflow models serve` need
nothing from this project's folder. `predict` takes raw rows (a DataFrame with the original
columns, raw text, or images in their raw units) and returns labels with class probabilities,
or values in the target's units.

pipeline/tracking logs it; MLflow imports it when loading the model. It imports torch and MLflow
only here and in `load_context`.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipeline.data import preprocessing

BATCH_ROWS = 512  # as evaluate's default batch: the same rows meet the same arithmetic


class RawInputModel(mlflow.pyfunc.PythonModel):
    """Raw inputs -> preprocessing -> the torch model -> labels/probabilities or values.

    `model_config={"predict_device": "cpu" | "cuda" | "auto"}` at load time picks the
    device (default: cuda when present)."""

    def load_context(self, context) -> None:
        import torch

        from models import model_from_saved

        self.prep = preprocessing.load(context.artifacts["preprocessor"])
        saved = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        wanted = (context.model_config or {}).get("predict_device", "auto")
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(wanted)
        self.model = model_from_saved(saved).to(self.device)

    # The hint is for MLflow, which warns without one: it infers no schema from a DataFrame
    # hint and converts nothing. Image models get arrays; the logged signature is the contract.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        import torch

        x = self.prep.transform(model_input)
        if len(x) == 0:
            raise preprocessing.InputError("no rows to predict")
        outputs = []
        with torch.no_grad():
            for start in range(0, len(x), BATCH_ROWS):
                batch = torch.as_tensor(x[start : start + BATCH_ROWS], device=self.device)
                out = self.model(batch)
                outputs.append((out[0] if isinstance(out, tuple) else out).float().cpu().numpy())
        return self.prep.decode(np.concatenate(outputs))
