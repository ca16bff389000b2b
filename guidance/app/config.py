"""Run configs: one YAML file describes a whole generation (model, sampler, guidance, prompts or class labels,
output), validated by a typed schema. Reading uses safe YAML loading only: nothing in a config can import or
execute code. Every problem is reported with the file, the field path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from ..errors import GuidanceError
from ..pipelines.schedulers import SCHEDULERS
from ..registry import explain
from ..spec import Guidance, load
from ..yaml_file import read_yaml


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSection(Section):
    """Which pipeline: a bundled model name (digits, digits-no-dropout), a local folder, or a hub id."""

    path: str = "digits"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")


class SamplerSection(Section):
    """How to sample: the scheduler (default: the pipeline's own), steps, seed, images per prompt or label."""

    scheduler: Literal[("default", *SCHEDULERS)] = "default"  # type: ignore[valid-type]
    steps: int = Field(25, ge=1, le=1000)
    seed: int = Field(0, ge=0, lt=2**63)
    batch: int = Field(1, ge=1, le=64)
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM's η (digits and DDIM schedulers)")
    height: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    width: int | None = Field(None, ge=8, le=4096, multiple_of=8)


class OutputSection(Section):
    """Where images go: `dir/prefix-<item>-<image>.png`."""

    dir: str = "outputs"
    prefix: str = Field("image", pattern=r"^[A-Za-z0-9._-]+$")


class RunConfig(Section):
    """A complete, validated run."""

    model: ModelSection = Field(default_factory=ModelSection)
    sampler: SamplerSection = Field(default_factory=SamplerSection)
    guidance: Guidance = Field(default_factory=Guidance)
    prompts: list[str] | None = Field(None, min_length=1)
    negative_prompt: str | None = None
    class_labels: list[int] | None = Field(None, min_length=1)
    output: OutputSection = Field(default_factory=OutputSection)

    @field_validator("guidance", mode="before")
    @classmethod
    def _guidance(cls, value: Any) -> Guidance:
        return load({} if value is None else value)

    @field_serializer("guidance")
    def _spec(self, value: Guidance) -> dict[str, Any]:
        return value.to_spec()

    @field_validator("class_labels")
    @classmethod
    def _labels(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(label < 0 for label in value):
            raise ValueError("class labels are non-negative class indices")
        return value

    @model_validator(mode="after")
    def _one_condition(self) -> RunConfig:
        if self.prompts is not None and self.class_labels is not None:
            raise ValueError("give either `prompts` (text models) or `class_labels` (class-conditional models), "
                             "not both")
        return self

    def items(self) -> list[str | int]:
        """The prompts or class labels to generate (digits by default: 0–9)."""
        return list(self.prompts or self.class_labels or range(10))


def _fields(cls: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """Allowed keys at a nested path of the schema."""
    for key in path:
        field = cls.model_fields.get(str(key))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        cls = annotation
    return list(cls.model_fields)


def validate(data: Any, source: str = "<config>") -> RunConfig:
    """A RunConfig from a mapping; GuidanceError listing every problem (one per line) otherwise."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise GuidanceError(f"{source}: a run config is a mapping with sections model, sampler, guidance, prompts "
                            f"or class_labels, output — not {type(data).__name__}.")
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as error:
        problems = explain(error, lambda path: f"{source}: {'.'.join(path) or '(top level)'}",
                           lambda path: _fields(RunConfig, path))
        raise GuidanceError("\n".join(problems)) from None
    except GuidanceError as error:
        raise GuidanceError(f"{source}: guidance: {error}") from None


def read(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file (safe loading), or a GuidanceError naming the file."""
    data = read_yaml(path, "config file", "Check the path, or start from a preset in configs/.")
    if data is not None and not isinstance(data, dict):
        raise GuidanceError(f"{path}: a run config is a mapping (model:, sampler:, guidance:, ...), "
                            f"not a {type(data).__name__}.")
    return data or {}


def parse_value(text: str) -> Any:
    """A --set / --grid value: a YAML scalar or flow collection (`3`, `apg`, `{name: apg, eta: 0}`, `[1, 2]`)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise GuidanceError(f"Cannot read the value {text!r}; write a number, a word, [a, list] or {{a: mapping}}.")\
            from None


def set_path(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with `value` at the dotted key path (sections are created as needed)."""
    keys = [k for k in dotted.split(".")]
    if not all(keys):
        raise GuidanceError(f"Bad key path {dotted!r}: write section.key, e.g. guidance.scale or sampler.steps.")
    out = copy.deepcopy(data)
    node = out
    for key in keys[:-1]:
        child = node.get(key)
        if isinstance(child, str) and key in ("rule", "reference", "schedule", "policy"):
            child = {"name": child}  # `guidance.rule.eta=0` on `rule: apg`
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise GuidanceError(f"Cannot set {dotted!r}: '{key}' holds {child!r}, not a section.")
        node[key] = child
        node = child
    node[keys[-1]] = value
    return out


def apply_sets(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` assignments (the CLI's --set) to a raw config mapping."""
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise GuidanceError(f"--set {assignment!r}: write key.path=value, e.g. --set guidance.scale=5.")
        data = set_path(data, key.strip(), parse_value(text))
    return data
