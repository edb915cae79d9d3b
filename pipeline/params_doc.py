"""docs/params.md: the params.yaml reference, written from the schema itself (every section's
docstring, every key's type, default and description), so it cannot drift from what `check`
accepts. `python -m pipeline params-doc` prints it; tests/test_docs.py keeps the file current.
"""

from __future__ import annotations

import json
import typing
from types import NoneType, UnionType
from typing import Annotated

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline.config import Params

HEADER = """# params.yaml reference

Generated from the schema in `pipeline/params/` and `models/configs.py` by
`python -m pipeline params-doc > docs/params.md` (tests/test_docs.py fails when it is stale).
An experiment resolves as `defaults` deep-merged with `experiments.<name>`; a `model` naming
another family replaces the default model instead of merging into it.
"""


def _sections(cls: type[BaseModel], path: str, out: dict[type, str], parent: str = "") -> None:
    """Every schema class reachable from `cls`, with its title: the dotted path where it first
    appears, and the value that picks it where it is one of several."""
    if cls in out:
        return
    tag = _tag(cls)
    title = f"`{path}` with `{tag}`" if tag else f"`{path}`" if path else "top level"
    if title in out.values():  # e.g. the split of a table and the split of a series
        title += f" (`{parent}`)"
    out[cls] = title
    for name, field in cls.model_fields.items():
        key = f"{path}.{name}" if path else name
        if name in ("datasets", "experiments", "synthetic"):
            key += ".<name>"
        for sub in _models(field.annotation):
            _sections(sub, key, out, tag or parent)


def _models(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _tag(cls: type[BaseModel]) -> str:
    """`source: table` or `name: mlp`: the value that picks this class in a union."""
    for key in ("source", "name", "type"):
        field = cls.model_fields.get(key)
        if field is not None and field.is_required() and typing.get_origin(field.annotation):
            return f"{key}: {' | '.join(map(str, typing.get_args(field.annotation)))}"
    return ""


def _type(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, UnionType):
        if _models(annotation):  # a union of sections, picked by a tag
            return "one of the sections below"
        return " or ".join(_type(a) for a in args if a is not NoneType) + (
            " or null" if NoneType in args else ""
        )
    if origin is tuple:
        return f"list of {_type(args[0])}"
    if origin is dict:
        value = "section (below)" if _models(args[1]) else _type(args[1])
        return f"name: {value}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section (below)"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel) or value is PydanticUndefined:
        return ""
    return f"`{json.dumps(value, default=str)}`"


def _bounds(metadata) -> list[str]:
    words = []
    for item in metadata:
        for name, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, name, None) is not None:
                words.append(f"{sign} {getattr(item, name)}")
    return words


def _constraints(field) -> str:
    words = _bounds(field.metadata)
    args = typing.get_args(field.annotation)
    if typing.get_origin(field.annotation) is tuple and typing.get_origin(args[0]) is Annotated:
        words += [f"each {w}" for w in _bounds(typing.get_args(args[0])[1:])]
    return ", ".join(words)


def render() -> str:
    found: dict[type, str] = {}
    _sections(Params, "", found)
    parts = [HEADER]
    for cls, title in found.items():
        parts.append(f"## {title}\n")
        if cls.__doc__ and cls.__doc__ != BaseModel.__doc__:
            parts.append(" ".join(cls.__doc__.split()) + "\n")
        fields = dict(cls.model_fields)
        base = next((b for b in cls.__bases__ if b in found and b is not cls), None)
        if base is not None:  # e.g. an experiment: its own keys, then every key of defaults
            fields = {k: f for k, f in fields.items() if k not in base.model_fields}
            parts.append(f"Every key of {found[base]}, and:\n")
        parts.append("| key | type | default | allowed | description |\n|---|---|---|---|---|")
        for name, field in fields.items():
            key = field.alias or name  # `from`, a Python keyword: `from_` in the class
            row = (key, _type(field.annotation), _default(field), _constraints(field))
            doc = (field.description or "").replace("|", "\\|")
            parts.append(f"| `{row[0]}` | {row[1]} | {row[2]} | {row[3]} | {doc} |")
        parts.append("")
    return "\n".join(parts)


def main() -> int:
    print(render(), end="")
    return 0
