"""Validation of the config dataclasses by pydantic: strict keys, lax types, errors by dotted key.

Every section is a stdlib dataclass deriving from `Section`, whose `__pydantic_config__` makes a
pydantic `TypeAdapter` refuse unknown keys (nested sections inherit it). Ranges are `Annotated`
field constraints and cross-field rules small `model_validator`s on the sections themselves; lax
mode turns the strings of `serve run app key=value` into the field types. Every pydantic error
becomes one `ConfigError` line naming the dotted key (`unknown config key 'serve.foo'`).

Usage:
    cfg = validate(DecodeConfig, {"max_new_tokens": "96"}, "decode")   # DecodeConfig(max_new_tokens=96, ...)
    plain = dump(cfg)                                                    # JSON-ready dict; validate() takes it back
    check_section(cfg.train.dcd, "train.dcd")                           # re-check a section built in code
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

from echo_ray.errors import ConfigError

T = TypeVar("T")


class Section:
    """Base of every config dataclass: pydantic reads this config from stdlib dataclasses too."""

    __pydantic_config__ = ConfigDict(extra="forbid")


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def validate(cls: type[T], data: Any, prefix: str = "") -> T:
    """`data` (a mapping from YAML, JSON or the CLI) as a checked `cls`; `prefix` leads every key path."""
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as e:
        raise ConfigError("; ".join(_message(cls, err, prefix) for err in e.errors())) from None


def dump(cfg: Any) -> dict[str, Any]:
    """Plain JSON/YAML data of a config dataclass (tuples become lists); `validate` reads it back."""
    return _adapter(type(cfg)).dump_python(cfg, mode="json", warnings=False)


def check_section(cfg: T, where: str) -> T:
    """Re-validate a section built in code (loaded ones were checked already), naming keys under `where`."""
    return validate(type(cfg), dump(cfg), where)


def _path(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(cls: type, err: Any, prefix: str) -> str:
    path, kind = _path(prefix, err["loc"]), err["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        valid = ", ".join(sorted(_fields_at(cls, err["loc"][:-1])))
        return f"unknown config key '{path}' (valid here: {valid})"
    if kind == "value_error":  # a section's model_validator: its own sentence
        return f"{path or cls.__name__}: {err['ctx']['error']}"
    return f"'{path or cls.__name__}': {err['msg'][0].lower()}{err['msg'][1:]}, got {err['input']!r}"


def _fields_at(cls: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at `loc` under `cls` (for the 'valid here' hint)."""
    tp = cls
    for part in (*loc, None):
        while typing.get_origin(tp) in (list, typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if part is None or isinstance(part, int):
            continue
        tp = typing.get_type_hints(tp).get(part)
    return list(typing.get_type_hints(tp)) if isinstance(tp, type) else []
