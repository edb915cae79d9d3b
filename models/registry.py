"""The model registry: one entry per family holds its builder and its config class.

Usable without the pipeline: `build_model("cnn", {"channels": (16,)}, DataSpec((1, 8, 8), 10))`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from models.configs import CONFIGS


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data."""

    input_shape: tuple[int, ...]  # one sample, e.g. (C, H, W), (T, F) or (T,) for tokens
    num_classes: int = 0  # classification
    horizon: int = 0  # forecasting: values predicted per sample
    vocab_size: int = 0  # token inputs
    per_step: bool = False  # one output per sequence step (language models)
    binary: bool = False  # two classes through one sigmoid logit (layers.BinaryLogit)

    @property
    def outputs(self) -> int:
        """Width of a predictive head: one logit per class, or one value per horizon step."""
        return self.num_classes or self.horizon


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config_cls: type
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type):
    """Decorator: register `builder(*, config, spec) -> nn.Module` under `name`."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"model {name!r}: config class must be a dataclass")

    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, config_cls, builder)
        return builder

    return decorate


def load_families() -> None:
    """Import every family module named in `models.configs.CONFIGS` (each registers itself).
    Done on first use, so that importing `models.configs` alone does not import torch."""
    for name in CONFIGS:
        importlib.import_module(f"models.{name}")


def get_entry(name: str) -> ModelEntry:
    load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def list_models() -> list[str]:
    load_families()
    return sorted(_REGISTRY)


def make_config(name: str, config: Mapping[str, Any] | Any | None = None):
    """The family's config dataclass from a mapping (lists become tuples), an instance or None."""
    entry = get_entry(name)
    if isinstance(config, entry.config_cls):
        return config
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config or {}).items()}
    return entry.config_cls(**values)


def build_model(name: str, config: Mapping[str, Any] | Any | None, spec: DataSpec) -> nn.Module:
    """Build a registered model for data described by `spec`."""
    return get_entry(name).builder(config=make_config(name, config), spec=spec)


def model_from_saved(saved: Mapping[str, Any], load_weights: bool = True) -> nn.Module:
    """The model a training run saved as `{"model": {"name", **config}, "spec": DataSpec
    fields, "state_dict"}` (artifacts/<exp>/model.pt and the registered model's weights), in
    eval mode; with `load_weights=False` the same architecture, freshly initialised."""
    spec = DataSpec(**{**saved["spec"], "input_shape": tuple(saved["spec"]["input_shape"])})
    config = {k: v for k, v in saved["model"].items() if k != "name"}
    model = build_model(saved["model"]["name"], config, spec)
    if load_weights:
        model.load_state_dict(saved["state_dict"])
    return model.eval()
