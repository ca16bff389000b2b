"""Name → class registries, one per axis, with helpful errors for unknown names and parameters."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from types import UnionType
from typing import Any, Generic, Literal, TypeVar, Union, get_args, get_origin

from pydantic import ValidationError

from .errors import GuidanceError, cut, shorten
from .strategy import Strategy

S = TypeVar("S", bound=Strategy)


def did_you_mean(word: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def type_name(annotation: Any) -> str:
    """A short, readable name of a parameter's type ('float', 'one of class|prompt', 'float or null')."""
    if get_origin(annotation) is Literal:
        return "one of " + "|".join(str(a) for a in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        names = [type_name(a) for a in get_args(annotation) if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in get_args(annotation) else "")
    return getattr(annotation, "__name__", str(annotation))


def describe_fields(cls: type[Strategy]) -> str:
    """'a (float, default 1.0), b (...)' for error messages and listings."""
    parts = []
    for field, info in cls.model_fields.items():
        default = "required" if info.is_required() else f"default {info.default!r}"
        parts.append(f"{field} ({type_name(info.annotation)}, {default})")
    return ", ".join(parts) or "none"


def explain(error: ValidationError, name: Callable[[tuple[str, ...]], str],
            allowed: Callable[[tuple[str, ...]], list[str]]) -> list[str]:
    """One sentence per problem of a pydantic ValidationError (the one reader of its structure in the project):
    `name(path)` names a field, `allowed(path)` lists the keys allowed in the mapping at `path`. A validator's own
    sentence is kept as it is; pydantic's generic ones get the (shortened) bad value."""
    sentences = []
    for item in error.errors():
        path = tuple(cut(str(p), 40) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            keys = allowed(path[:-1])
            sentences.append(f"{name(path)}: unknown key.{did_you_mean(path[-1], keys)} "
                             f"Allowed here: {', '.join(keys)}.")
            continue
        own = item["type"] in ("value_error", "assertion_error") and "ctx" in item
        reason = str(item["ctx"]["error"]) if own else item["msg"]
        if not path:
            sentences.append(reason)
        elif own or item["type"] == "missing":
            sentences.append(f"{name(path)}: {reason}")
        else:
            sentences.append(f"{name(path)} = {shorten(item.get('input'))}: {reason}")
    return [s if s.endswith(".") else s + "." for s in sentences]


class Registry(Generic[S]):
    """The strategies of one axis, by name."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._classes: dict[str, type[S]] = {}

    def register(self, cls: type[S]) -> type[S]:
        cls.axis = self.axis
        self._classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return list(self._classes)

    def classes(self) -> list[type[S]]:
        return list(self._classes.values())

    def get(self, name: str) -> type[S]:
        if not isinstance(name, str) or name not in self._classes:
            hint = did_you_mean(name, self.names()) if isinstance(name, str) else ""
            raise GuidanceError(
                f"Unknown {self.axis} {shorten(name)}.{hint} Choose one of: {', '.join(self.names())} "
                f"(`guidance list` shows each with its parameters)."
            )
        return self._classes[name]

    def build(self, value: str | Mapping[str, Any] | S) -> S:
        """A strategy from its name, a mapping {name: ..., <params>}, or an instance."""
        if isinstance(value, Strategy):
            if value.axis != self.axis:
                raise GuidanceError(f"{value.name!r} is a {value.axis}, not a {self.axis}.")
            return value  # type: ignore[return-value]
        if isinstance(value, str):
            name, params = value, {}
        elif isinstance(value, Mapping):
            if "name" not in value:
                raise GuidanceError(
                    f"The {self.axis} mapping {shorten(dict(value))} has no 'name'. Write e.g. "
                    f"{{name: {self.names()[0]}, ...}} with one of: {', '.join(self.names())}."
                )
            params = {k: v for k, v in value.items() if k != "name"}
            name = value["name"]
        else:
            raise GuidanceError(
                f"The {self.axis} must be a name or a mapping with a 'name' key, not {type(value).__name__} "
                f"{shorten(value)}. Choose one of: {', '.join(self.names())}."
            )
        cls = self.get(name)
        try:
            return cls(**params)
        except ValidationError as error:
            problems = explain(error, lambda path: f"parameter '{'.'.join(path)}'", lambda path: list(cls.model_fields))
            raise GuidanceError(f"Invalid {cls.axis} '{cls.name}': {' '.join(problems)} Its parameters are: "
                                f"{describe_fields(cls)}.") from None
