"""Typed settings: a dataclass built from a mapping of YAML / --set values, each value checked once.

Every config section (data, model, optim, run) and every option set of a registry entry (LOW's
`lam`, focal's `gamma`, ...) is a dataclass. `build` turns a mapping into one: it converts each
value to its field's type (`1` -> `1.0` for a float, nothing else is guessed) and rejects unknown
keys, naming the valid ones. Range checks live in the dataclass's own `__post_init__` (through
`require`), so a value is validated in one place whichever way it arrives (YAML, flag, --set,
a saved config.yaml, or Python).

A field can also declare its command-line flag: ``lam: float = field(default=1.0,
metadata=flag("--lam", "LOW's lambda"))``; `add_flags` turns those into argparse options whose
destination is ``<section>.<field>``, and `flag_layer` collects the given ones into a config layer.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from dermlow.errors import UserError

T = TypeVar("T")


def require(ok: bool, message: str) -> None:
    """Raise UserError(message) unless `ok`: the one-line check used in `__post_init__`."""
    if not ok:
        raise UserError(message)


def finite(value: float) -> bool:
    """True for a finite real number (not NaN, not +-inf)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def flag(name: str, help: str, **argparse_options: Any) -> dict[str, Any]:
    """Field metadata that gives a setting a command-line flag (see `add_flags`)."""
    return {"flag": name, "help": help, "argparse": argparse_options}


def field_names(cls: type) -> list[str]:
    """The settings of dataclass `cls`, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def build(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """`cls(**values)`, each value converted to its field's type; `where` names the section in errors.

    Raises:
        UserError: an unknown key (the message lists the valid ones), a value of the wrong type,
            or a value the dataclass's own checks refuse.
    """
    if not isinstance(values, Mapping):
        raise UserError(f"setting '{where}' must be a section (a mapping), got {values!r}.")
    valid = field_names(cls)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        listed = ", ".join(valid) if valid else "none"
        raise UserError(f"unknown setting '{where}.{unknown[0]}'. Valid settings there: {listed}.")
    hints = typing.get_type_hints(cls)
    return cls(**{key: coerce(f"{where}.{key}", hints[key], value) for key, value in values.items()})


def _args(hint: Any) -> tuple[Any, ...]:
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return typing.get_args(hint) if union else ()


def coerce(name: str, hint: Any, value: Any) -> Any:
    """`value` as type `hint` (bool, int, float, str, list[int], list[float], X | None); UserError if it is not."""
    options = _args(hint)
    if options:  # X | None
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
    if value is None:
        raise UserError(f"setting {name} cannot be empty.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"setting {name} must be true or false, got {value!r}.")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"setting {name} must be a whole number, got {value!r}.")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"setting {name} must be a number, got {value!r}.")
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise UserError(f"setting {name} must be a list like [1, 2], got {value!r}.")
        (item,) = typing.get_args(hint) or (Any,)
        return value if item is Any else [coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value)]
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"setting {name} must be a text, got {value!r}.")
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """A settings dataclass as a plain mapping (lists copied), the form saved in config.yaml."""
    return dataclasses.asdict(obj)


def _flag_type(hint: Any) -> Any:
    options = _args(hint)
    return next(o for o in options if o is not type(None)) if options else hint


def add_flags(parser: argparse.ArgumentParser, section: str, cls: type, *, seen: dict[str, str] | None = None,
              **overrides: dict[str, Any]) -> None:
    """Add an argparse option for each field of `cls` that declares a flag (see `flag`).

    The option's destination is ``<section>.<field>`` and its default None (a flag not given
    does not override the config). A bool field becomes a switch. `seen` (flag -> destination)
    lets several option sets of one section declare the same flag for the same field once;
    `overrides` maps a field name to extra argparse keywords (e.g. choices from a registry).
    """
    seen = {} if seen is None else seen
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = {**f.metadata, **overrides.get(f.name, {})}
        if "flag" not in meta:
            continue
        name, dest = meta["flag"], f"{section}.{f.name}"
        if name in seen:
            if seen[name] != dest:
                raise ValueError(f"flag {name} is declared for both {seen[name]} and {dest}")
            continue
        seen[name] = dest
        kwargs = {"help": meta.get("help"), **meta.get("argparse", {})}
        kind = _flag_type(hints[f.name])
        if kind is bool:
            kwargs.setdefault("action", "store_true")
        else:
            kwargs.setdefault("type", kind if kind in (int, float, str) else str)
            if "choices" not in kwargs:
                kwargs.setdefault("metavar", name.lstrip("-").upper().replace("-", "_"))
        parser.add_argument(name, dest=dest, default=None, **kwargs)


def flag_layer(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The flags given on the command line (`add_flags` destinations) as a config layer."""
    layer: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, key = dest.split(".", 1)
            layer.setdefault(section, {})[key] = value
    return layer
