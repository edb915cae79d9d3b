"""The `model` section: one class per registered family, built from its torch-free config
dataclass in models/configs.py (fields, defaults, constraints, docs), picked by `name`."""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Literal, Union

from pydantic import Field, create_model

from models.configs import CONFIGS
from pipeline.params.base import Strict


def _model_params(name: str, config_cls: type) -> type[Strict]:
    """The params.yaml section of one model family: the fields, defaults, constraints and docs
    of its config dataclass, plus `name` to pick the family."""
    hints = typing.get_type_hints(config_cls, include_extras=True)
    fields = {
        f.name: (hints[f.name], Field(f.default, description=f.metadata.get("doc")))
        for f in dataclasses.fields(config_cls)
    }
    cls_name = config_cls.__name__.removesuffix("Config") + "Params"
    return create_model(cls_name, __base__=Strict, name=(Literal[name], ...), **fields)


MODEL_PARAMS = {name: _model_params(name, cls) for name, cls in CONFIGS.items()}
ModelParams = Annotated[Union[tuple(MODEL_PARAMS.values())], Field(discriminator="name")]  # noqa: UP007
