"""Turn pydantic validation errors into one line each: the dotted key, the bad value and
what is allowed (with a 'did you mean' for unknown keys)."""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError


def validate(cls, data: Any, where, problems: list[str]):
    """Validate `data`; on failure append one line per error and return None.

    `where(keys)` gives the user-facing prefix of an error at `keys` (experiments report
    errors against the section the bad value came from).
    """
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as exc:
        for err in exc.errors():
            keys, allowed = _walk(cls, err["loc"])
            path = ".".join([where(keys), *keys])
            problems.append(_describe(err, path, allowed))
        return None


def _describe(err: dict, path: str, allowed: tuple[str, ...]) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        return unknown_key(path, path.rsplit(".", 1)[-1], allowed)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key = ctx["discriminator"].strip("'")
        if kind == "union_tag_not_found":
            return f"{path}.{key}: missing required key"
        known = ", ".join(sorted(t.strip("'") for t in ctx["expected_tags"].split(", ")))
        what = "model" if key == "name" else key
        return f"{path}.{key}: {ctx['tag']!r} is not a known {what}; known {what}s: {known}"
    if kind == "missing":
        return f"{path}: missing required key"
    if kind == "literal_error":
        return f"{path}: {value!r} is not allowed; expected {ctx['expected']}"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{path}: {msg}"
    return f"{path}: {value!r} is invalid: {msg}"


def unknown_key(path: str, key: str, allowed) -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
    if close:
        return f"{path}: unknown key; did you mean {close[0]!r}?"
    return f"{path}: unknown key; allowed keys: {', '.join(allowed)}"


def _walk(cls: type[BaseModel], loc: tuple) -> tuple[list[str], tuple[str, ...]]:
    """Follow a pydantic error location through the schema.

    Returns the user-facing key path (discriminator tags removed) and the keys allowed where
    the path ends (for 'did you mean').
    """
    keys: list[str] = []
    node: Any = cls
    allowed: tuple[str, ...] = ()
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, tuple):  # discriminated union: this loc part is the tag
            node = next((m for m in node if _tag(m) == part), None)
            if node is None:
                break
            continue
        keys.append(str(part))
        if isinstance(node, type) and issubclass(node, BaseModel):
            # the keys as written in params.yaml (`from`: the field `from_`)
            by_key = {f.alias or k: f for k, f in node.model_fields.items()}
            allowed = tuple(by_key)
            field = by_key.get(part)
            node = field.annotation if field else None
        else:
            args = get_args(node)
            node = args[-1] if args else None
    return keys, allowed


def _tag(model: type[BaseModel]) -> str:
    """The discriminator value of a union member (its `name`, `source` or `type`)."""
    for key in ("name", "source", "type"):
        field = model.model_fields.get(key)
        if field is not None and get_origin(field.annotation) is Literal:
            return get_args(field.annotation)[0]
    return ""


def _unwrap(tp):
    """Strip Annotated/Optional; a union of models becomes a tuple of its members."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(models) > 1:
            return tuple(models)
        return _unwrap(members[0])
    return tp


def has_path(data: Any, keys: list[str]) -> bool:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True
