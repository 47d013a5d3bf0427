"""The one dict -> dataclass converter, for every config and manifest of the project.

Model configs (``config.json`` of a checkpoint), preprocessing configs, training recipes and ``model.json``
are all rebuilt by ``from_dict``, driven by the dataclass's type annotations. It is strict on purpose: a
typo must never become a default and a wrong type never passes, so every error names the key and the type
it expected:

* unknown keys are refused (with the closest known field as a hint), missing required fields are named;
* ``bool`` takes only booleans, ``int`` only integers (not ``True``, not ``2.0``), ``float`` integers or
  floats, ``str`` only strings; a ``Literal`` takes one of its values; ``X | None`` takes ``None``;
* ``tuple[...]`` and ``list[...]`` take lists (JSON has no tuples), ``dict[str, V]`` mappings with every
  value converted to ``V``; nested dataclasses take mappings, recursively; ``Any`` takes anything.

Text from a command line is parsed into values before it gets here (``d2v.training.config`` reads
overrides as YAML, floats such as ``5e-4`` included), so this module never guesses types from strings.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, TypeVar

from d2v.core.errors import ConfigError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass (tuples become lists when serialised)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: Any, *, where: str = "") -> T:
    """Rebuild dataclass ``cls`` from ``data`` (parsed JSON or YAML); ``where`` prefixes error messages.

    Raises:
        ConfigError: naming the first offending key, the type it expected and the value it got; also any
            ``ConfigError`` the dataclass's own ``__post_init__`` raises for cross-field rules.
    """
    label = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, got {_describe(data)}")
    init_fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        child = f"{where}.{key}" if where else str(key)
        if key not in init_fields:
            close = difflib.get_close_matches(str(key), list(init_fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(init_fields)}"
            raise ConfigError(f"{child}: unknown field ({hint})")
        values[key] = convert(hints[key], value, child)
    missing = [
        name
        for name, f in init_fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{label}: missing required field(s) {', '.join(missing)}")
    return cls(**values)


def convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` as the annotated type ``tp``, or a ``ConfigError`` naming ``where``."""
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        # ``True == 1``: a bool only matches a bool member and a number only a number member.
        if not any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(args, value, where)
    if origin is tuple:
        return _convert_tuple(args, value, where)
    if origin is list or tp is list:
        items = _sequence(value, where)
        return [convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(items)] if args else list(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        if not args:
            return dict(value)
        return {convert(args[0], k, f"{where} key"): convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return _convert_scalar(tp, value, where)


def _convert_union(args: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{where}: expected {' | '.join(_name(a) for a in args)}, got null")
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return convert(arg, value, where)
        except ConfigError as exc:
            errors.append(exc.message)
    if len(errors) == 1:
        raise ConfigError(errors[0])
    raise ConfigError(f"{where}: expected {' | '.join(_name(a) for a in args)}, got {_describe(value)}")


def _convert_tuple(args: tuple[Any, ...], value: Any, where: str) -> tuple[Any, ...]:
    items = _sequence(value, where)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(items))
    if args and len(items) != len(args):
        raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(items)} ({list(items)!r})")
    if not args:
        return tuple(items)
    return tuple(convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, items, strict=True)))


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:  # a schema bug, not a user error
        raise TypeError(f"{where}: the converter does not handle the annotation {_name(tp)}")
    if not ok:
        raise ConfigError(f"{where}: expected {_name(tp)}, got {_describe(value)}")
    return value


def _sequence(value: Any, where: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list such as [a, b], got {_describe(value)}")
    return value


def _name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _describe(value: Any) -> str:
    return "null" if value is None else f"{value!r} ({type(value).__name__})"
