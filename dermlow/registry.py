"""Registries: one per extension point (losses, weightings, data sets), filled by decorators.

An entry is a class or factory registered under a name, with a short label for people (the
review app, the bench report), a one-line help for the CLI, an options dataclass (its typed
settings, built from its own config section by `options`) and any extra attributes the extension
point needs (e.g. a data set's challenge `year`)::

    LOSSES = Registry("loss")

    @LOSSES.register("focal", label="FL", help="focal loss (Lin et al. 2017)", options=FocalOptions)
    def make_focal(options, class_counts): ...

    LOSSES.get("focal")          # the factory; an unknown name is a UserError listing the valid ones
    LOSSES.names()               # ("ce", "balanced_ce", "focal"), in registration order
    LOSSES.entry("focal").label  # "FL"

Everything that lists choices (CLI help and choices, config validation, the app's labels, the
bench's methods) asks a registry, so a new entry is one decorated function or class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from dermlow import settings
from dermlow.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class NoOptions:
    """The options of an entry that has none."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered class or factory and what people and the config need to know about it."""

    name: str
    obj: T
    label: str = ""  # short display name (app, reports); "" when the name says it all
    help: str = ""  # one line for `--help`
    options: type = NoOptions  # dataclass of the entry's settings
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:  # extra attributes, e.g. entry.year
        try:
            return self.__dict__["extra"][key]
        except KeyError:
            raise AttributeError(f"registry entry '{self.__dict__.get('name')}' has no attribute {key!r}") from None


class Registry(Generic[T]):
    """Named entries of one extension point (`kind` is the word used in messages, e.g. "loss")."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, label: str = "", help: str = "", options: type = NoOptions,
                 **extra: Any) -> Callable[[T], T]:
        """Decorator: register the decorated class or function as `name` (returned unchanged)."""

        def decorate(obj: T) -> T:
            self.add(name, obj, label=label, help=help, options=options, **extra)
            return obj

        return decorate

    def add(self, name: str, obj: T, *, label: str = "", help: str = "", options: type = NoOptions,
            **extra: Any) -> T:
        """Register `obj` as `name`; a name registered twice is a programming error (ValueError)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = Entry(name, obj, label, help, options, dict(extra))
        return obj

    def remove(self, name: str) -> None:
        """Unregister `name` (tests that register a temporary entry)."""
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
        """The entry called `name`; an unknown name is a UserError that lists the valid ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = ", ".join(self._entries)
            raise UserError(f"unknown {self.kind} '{name}'. Valid {self.plural}: {valid}.") from None

    def get(self, name: str) -> T:
        """The registered class or factory called `name` (UserError listing the valid names)."""
        return self.entry(name).obj

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        return iter(tuple(self._entries.values()))

    def label(self, name: str) -> str:
        """The display label of `name`; the name itself when it is unknown (e.g. an old run's)."""
        entry = self._entries.get(name)
        return name if entry is None else entry.label

    def help_text(self) -> str:
        """'a (help) | b (help)': the choices for a `--help` line."""
        return " | ".join(f"{e.name} ({e.help})" if e.help else e.name for e in self._entries.values())

    def options(self, name: str, values: Mapping[str, Any], where: str) -> Any:
        """The options dataclass of entry `name` built from `values` (see `settings.build`).

        A key the entry does not have is a UserError naming the entry's valid options.
        """
        cls = self.entry(name).options
        unknown = sorted(set(values) - set(settings.field_names(cls)))
        if unknown:
            valid = ", ".join(settings.field_names(cls)) or "none"
            raise UserError(f"{self.kind} '{name}' has no option '{unknown[0]}' ({where}.{unknown[0]}). "
                            f"Its options: {valid}.")
        return settings.build(cls, values, where)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
