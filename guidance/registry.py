"""Name → class registries, one per axis, with helpful errors for unknown names and parameters."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import UnionType
from typing import Any, Generic, Literal, TypeVar, Union, get_args, get_origin

from pydantic import ValidationError

from .errors import GuidanceError
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


def _explain(cls: type[Strategy], params: Mapping[str, Any], error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"])
        message = str(item["ctx"]["error"]) if item["type"] == "value_error" and "ctx" in item else item["msg"]
        if item["type"] == "extra_forbidden":
            hint = did_you_mean(field, list(cls.model_fields)).strip().rstrip("?")
            hint = f" ({hint[0].lower()}{hint[1:]}?)" if hint else ""
            problems.append(f"'{field}' is not a parameter of {cls.axis} '{cls.name}'{hint}")
        elif not field:
            problems.append(message)
        else:
            problems.append(f"parameter '{field}' = {params.get(item['loc'][0], '(missing)')!r}: {message}")
    return (
        f"Invalid {cls.axis} '{cls.name}': " + "; ".join(problems) + f". Its parameters are: {describe_fields(cls)}."
    )


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
                f"Unknown {self.axis} {name!r}.{hint} Choose one of: {', '.join(self.names())} "
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
                    f"The {self.axis} mapping {dict(value)!r} has no 'name'. Write e.g. "
                    f"{{name: {self.names()[0]}, ...}} with one of: {', '.join(self.names())}."
                )
            params = {k: v for k, v in value.items() if k != "name"}
            name = value["name"]
        else:
            raise GuidanceError(
                f"The {self.axis} must be a name or a mapping with a 'name' key, not {type(value).__name__} "
                f"{value!r}. Choose one of: {', '.join(self.names())}."
            )
        cls = self.get(name)
        try:
            return cls(**params)
        except ValidationError as error:
            raise GuidanceError(_explain(cls, params, error)) from None
