"""The model registry: stable names, the champion alias (moved only by a clear gain), and
reading back a registered model (its MLmodel, its predictions) for `predict`."""

from __future__ import annotations

import os
from contextlib import contextmanager

from pipeline.errors import PipelineError
from pipeline.params.training import TrackingParams
from pipeline.tracking.context import store_uri

CHAMPION = "champion"


def registered_name(tracking: TrackingParams, experiment: str) -> str:
    """The stable registry name of an experiment's model."""
    return f"{tracking.experiment_name}.{experiment}"


def consider_champion(
    tracking: TrackingParams,
    name: str,
    version: str,
    metric: str,
    value: float,
    margin: float,
    higher_is_better: bool,
) -> dict:
    """Record `version`'s test metric on it; move the `champion` alias to it only if it beats
    the current champion's value by more than `margin` (half its bootstrap 95% interval).
    Returns the decision with its numbers."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(store_uri(tracking.uri))
    client.set_model_version_tag(name, version, "test_metric", metric)
    client.set_model_version_tag(name, version, "test_value", repr(value))
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    decision = {
        "model": name,
        "version": version,
        "metric": metric,
        "value": value,
        "margin": margin,
        "champion_before": champion.version if champion else None,
        "champion_value": None,
    }
    if champion is None:
        promote, why = True, "no champion yet"
    elif champion.version == version:
        promote, why = False, "this version is the champion"
    else:
        best = float(champion.tags.get("test_value", "nan"))
        decision["champion_value"] = best
        gain = (value - best) if higher_is_better else (best - value)
        promote = bool(gain > margin) or best != best  # a champion without a value loses
        why = f"{'beats' if promote else 'does not beat'} {best:.6g} by more than {margin:.4g}"
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision.update(
        promoted=promote,
        reason=why,
        champion_after=version if promote else (champion.version if champion else None),
    )
    return decision


def model_info(uri: str, tracking_uri: str):
    """The MLmodel of a logged or registered model (signature, metadata), without its weights;
    PipelineError with MLflow's first line when it cannot be read."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(store_uri(tracking_uri))
    try:
        return mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as err:
        raise PipelineError(str(err).strip().splitlines()[0]) from None


def load_pyfunc(uri: str, device: str):
    """The pyfunc model at `uri` (set as tracking URI first) on `device`; its `predict`
    raises PipelineError with MLflow's first line when it refuses (e.g. the input's schema)."""
    import mlflow.pyfunc

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr: our notes
    with _mlflow_errors():
        return _Predictor(mlflow.pyfunc.load_model(uri, model_config={"predict_device": device}))


class _Predictor:
    def __init__(self, model):
        self.model = model

    def predict(self, model_input):
        with _mlflow_errors():
            return self.model.predict(model_input)


@contextmanager
def _mlflow_errors():
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        raise PipelineError(str(err).strip().splitlines()[0]) from None
