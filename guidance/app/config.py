"""Run configs: one YAML file describes a whole generation (model, sampler, guidance, prompts or class labels,
output), validated by a typed schema. Reading uses safe YAML loading only: nothing in a config can import or
execute code. Every problem is reported with the file, the field path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from ..errors import GuidanceError, cut, shorten
from ..pipelines.bundled import BUNDLED
from ..pipelines.schedulers import SCHEDULERS
from ..registry import explain
from ..spec import Guidance, load
from ..yaml_file import is_file, read_yaml

MAX_SEED = 2**62  # torch generators take seeds below 2^63; a call's seed is the run's seed plus its index


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
    seed: int = Field(0, ge=0, le=MAX_SEED)
    batch: int = Field(1, ge=1, le=64)
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM's η (digits and DDIM schedulers)")
    height: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    width: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    frames: int | None = Field(None, ge=1, le=1024, description="video pipelines: frames per video (num_frames)")


class OutputSection(Section):
    """Where images go: `dir/prefix-<item>-<image>.png`, or `.webp` (animated) for videos, played at `fps`."""

    dir: str = "outputs"
    prefix: str = Field("image", pattern=r"^[A-Za-z0-9._-]+$")
    fps: int = Field(16, ge=1, le=240)


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
        if value is not None and not isinstance(value, Mapping | Guidance):
            raise ValueError("the guidance section is a mapping such as {rule: apg, scale: 7.5}, not "
                             f"{type(value).__name__}")
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


MIN_SAMPLES = 20  # two per digit class: the fewest the metrics' covariances and nearest neighbours can use
MAX_SAMPLES = 10_000  # k-NN precision/recall holds an N × N distance matrix (800 MB at 10 000)


def _model_name(value: str) -> str:
    """A bundled model's name or a pipeline folder (model_index.json)."""
    if value not in BUNDLED and not is_file(Path(value) / "model_index.json"):
        raise ValueError(f"no bundled model or pipeline folder {shorten(value, 300)}; use {', '.join(BUNDLED)} or a "
                         "folder saved with save_pretrained")
    return value


class SettingSection(Section):
    """One entry of an evaluation settings file: a guidance spec, at each of `scales` if given."""

    name: str | None = None
    guidance: dict[str, Any] = Field(default_factory=dict)
    scales: list[float] | None = Field(None, min_length=1)
    steps: int | None = Field(None, ge=1, le=1000)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    model: str | None = None
    method: str | None = None
    unconditional: bool = False
    negative_prompt: str | None = None

    _model = field_validator("model")(classmethod(lambda cls, value: value if value is None else _model_name(value)))

    @model_validator(mode="after")
    def _specs(self) -> SettingSection:
        for scale in self.scales or [None]:
            load(self.guidance if scale is None else {**self.guidance, "scale": scale})
        return self


class EvaluationFile(Section):
    """A `guidance evaluate` settings file: `settings:` (a list), or one `guidance:` section."""

    model: str = "digits"
    samples: int | None = Field(None, ge=MIN_SAMPLES, le=MAX_SAMPLES)
    steps: int = Field(25, ge=1, le=1000)
    settings: list[SettingSection] | None = Field(None, min_length=1)
    guidance: dict[str, Any] | None = None

    _model = field_validator("model")(classmethod(lambda cls, value: _model_name(value)))

    @model_validator(mode="after")
    def _one_form(self) -> EvaluationFile:
        if self.settings is not None and self.guidance is not None:
            raise ValueError("give either `settings:` (a list) or one `guidance:` section, not both")
        if self.settings is None:
            self.settings = [SettingSection(guidance=self.guidance or {})]
        return self


def _fields(cls: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """Allowed keys at a nested path of the schema (list indices are skipped)."""
    for key in path:
        if key.isdigit():
            continue
        annotation = getattr(cls.model_fields.get(str(key)), "annotation", None)
        while get_origin(annotation) in (list, Union, UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        cls = annotation
    return list(cls.model_fields)


def _checked(schema: type[BaseModel], data: Any, source: str, what: str) -> Any:
    """`schema` validated from the mapping `data`; one GuidanceError listing every problem (a line each)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise GuidanceError(f"{source}: {what}, not {type(data).__name__}.")
    try:
        return schema.model_validate(dict(data))
    except ValidationError as error:
        problems = explain(error, lambda path: f"{source}: {'.'.join(path) or '(top level)'}",
                           lambda path: _fields(schema, path))
        raise GuidanceError("\n".join(problems)) from None


def validate(data: Any, source: str = "<config>") -> RunConfig:
    """A RunConfig from a mapping; GuidanceError listing every problem (one per line) otherwise."""
    return _checked(RunConfig, data, source, "a run config is a mapping with sections model, sampler, guidance, "
                    "prompts or class_labels, output")


def read_evaluation(path: str | Path) -> EvaluationFile:
    """A validated `guidance evaluate` settings file."""
    data = read_yaml(path, "settings file", "Pass an existing YAML settings file (`guidance evaluate --help` shows "
                     "an example).")
    return _checked(EvaluationFile, data, str(path), "a settings file is a mapping with `settings:` (a list) or a "
                    "`guidance:` section")


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
        raise GuidanceError(f"Cannot read the value {shorten(text)}; write a number, a word, [a, list] or "
                            "{a: mapping}.")\
            from None


def set_path(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with `value` at the dotted key path (sections are created as needed)."""
    keys = [k for k in dotted.split(".")]
    if not all(keys):
        raise GuidanceError(f"Bad key path {shorten(dotted)}: write section.key, e.g. guidance.scale or sampler.steps.")
    out = copy.deepcopy(data)
    node = out
    for key in keys[:-1]:
        child = node.get(key)
        if isinstance(child, str) and key in ("rule", "reference", "schedule", "policy"):
            child = {"name": child}  # `guidance.rule.eta=0` on `rule: apg`
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise GuidanceError(f"Cannot set {shorten(dotted)}: '{cut(key, 40)}' holds {shorten(child)}, not a "
                                "section.")
        node[key] = child
        node = child
    node[keys[-1]] = value
    return out


def apply_sets(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` assignments (the CLI's --set) to a raw config mapping."""
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise GuidanceError(f"--set {shorten(assignment)}: write key.path=value, e.g. --set guidance.scale=5.")
        data = set_path(data, key.strip(), parse_value(text))
    return data
