"""Build typed dataclasses from plain dicts (YAML), collecting every problem at once.

Supports the annotations the configs use: ``str``, ``int``, ``float``, ``bool``,
``Optional[X]``, ``Literal[...]``, ``list[X]``, ``tuple[X, X]``, ``dict[str, X]`` and nested
dataclasses. Each problem becomes a :class:`~dhs_spark.errors.ConfigError` naming the dotted
field path, so a user sees ``data.moffat_beta: expected a number (got 'abc')``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from dhs_spark.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def convert(value: Any, tp: Any, path: str, errors: list[ConfigError], file: str | None) -> Any:
    """Return ``value`` converted to annotation ``tp``; append a ConfigError on mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(value, inner[0], path, errors, file)
    if value is None:
        errors.append(ConfigError(path, f"is required: expected {_type_name(tp)}", None, file))
        return None
    if origin is Literal:
        if value not in args:
            errors.append(ConfigError(path, f"expected {_type_name(tp)}", value, file))
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(ConfigError(path, "expected a mapping", value, file))
            return None
        return build(tp, value, path, errors, file)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(ConfigError(path, "expected true or false", value, file))
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(ConfigError(path, "expected an integer", value, file))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(ConfigError(path, "expected a number", value, file))
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(ConfigError(path, "expected a string", value, file))
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            errors.append(ConfigError(path, "expected a list", value, file))
            return value
        return [convert(v, args[0], f"{path}[{i}]", errors, file) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            errors.append(ConfigError(path, f"expected a list of {len(args)} values", value, file))
            return value
        return tuple(convert(v, a, f"{path}[{i}]", errors, file) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(ConfigError(path, "expected a mapping", value, file))
            return value
        return {str(k): convert(v, args[1], f"{path}.{k}", errors, file) for k, v in value.items()}
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def build(cls: type, data: dict, path: str, errors: list[ConfigError], file: str | None):
    """Instantiate dataclass ``cls`` from ``data``; unknown keys and bad values go to ``errors``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in names:
            errors.append(ConfigError(f"{prefix}{key}", f"unknown key (allowed: {', '.join(sorted(names))})", None, file))
    kwargs = {}
    for field in dataclasses.fields(cls):
        if not field.init or field.name not in data:
            continue
        kwargs[field.name] = convert(data[field.name], hints[field.name], f"{prefix}{field.name}", errors, file)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without default is missing
        errors.append(ConfigError(path or "<root>", str(exc), None, file))
        return None


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and nested containers -> YAML-safe dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj
