"""The `guidance:` spec: one choice per axis (reference × rule × schedule × policy), a scale and a rescale, and
optionally attention guidance inside the conditional pass (`attention`: NAG).

`load` turns a mapping, a YAML run-config path or a `Guidance` into a validated `Guidance`; every problem
becomes one `GuidanceError` paragraph naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .attention import ATTENTIONS, AttentionGuidance
from .errors import GuidanceError, shorten
from .plan import StepTable
from .policies import POLICIES, Policy
from .policies.always import Always
from .references import REFERENCES, Reference
from .references.uncond import Uncond
from .registry import explain
from .rules import RULES, Rule
from .rules.cfg import CFG
from .schedules import SCHEDULES, Schedule
from .schedules.base import AbsoluteSchedule
from .yaml_file import read_yaml

AXES = {"rule": RULES, "reference": REFERENCES, "schedule": SCHEDULES, "policy": POLICIES, "attention": ATTENTIONS}


def build_axis(axis: str, value: Any) -> Any:
    """A strategy of `axis` from a name, a mapping or an instance; a list of references is their combination."""
    if axis == "reference" and isinstance(value, list):
        value = {"name": "combined", "of": value}  # `reference: [icg, tsg]`
    return AXES[axis].build(value)


class Term(BaseModel):
    """An extra guidance term: rule(c, r, 1 + s_i) − c added to the main term's guided prediction, r the prediction of
    a reference built from the conditional rows (a perturbed network, ICG, TSG). Conventions: docs/CONVENTIONS.md §20.
    `scale` is the term's s (its paper's scale; 0 is off); without one, the reference's default term scale."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    reference: Reference
    scale: float | None = Field(None, validate_default=True)
    rule: Rule = Field(default_factory=CFG)
    schedule: Schedule = Field(default_factory=lambda: SCHEDULES.build("constant"))

    _build = field_validator("reference", "rule", "schedule", mode="before")(classmethod(
        lambda cls, value, info: build_axis(info.field_name, value)))

    @field_validator("scale", mode="before")
    @classmethod
    def _term_scale(cls, value: Any, info: Any) -> float | None:
        """s: a finite number ≥ 0, or the reference's default term scale (the paper's)."""
        reference = info.data.get("reference")
        if value is None and reference is not None and reference.default_term_scale is None:
            raise ValueError(f"a term with reference '{reference.name}' needs its scale s, e.g. scale: 1.0")
        if value is None:
            return getattr(reference, "default_term_scale", None)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"a term's scale s is a finite number ≥ 0 (0 is off), not {shorten(value)}")
        return float(value)

    @model_validator(mode="after")
    def _combination(self) -> Term:
        if not self.reference.from_condition:
            raise ValueError(f"reference '{self.reference.name}' cannot be a term: a term contrasts the conditional "
                             "prediction with a reference built from the same rows (pag, seg, slg, stg, "
                             "autoguidance, icg, tsg); the negative prompt belongs to the main reference")
        if self.rule.corrects_sampler or self.rule.predictor_corrector:
            raise ValueError(f"rule '{self.rule.name}' changes the sampler and can only be the main rule; a term "
                             "takes cfg, apg, cfg_zero_star, tcfg or fdg")
        if self.rule.outputs_zero(0):
            raise ValueError(f"rule '{self.rule.name}' zero-inits the first steps, which only the main rule can do; "
                             "set zero_init_steps: 0 in a term")
        return self

    def step_scales(self, steps: StepTable) -> list[float | None]:
        """s_i of every step (the schedule of 1 + s, minus 1); None where the term is off (s_i = 0)."""
        return [None if w == 1.0 else w - 1.0 for w in self.schedule.scales(1.0 + self.scale, steps)]

    def to_spec(self) -> dict[str, Any]:
        return {"reference": self.reference.to_spec(), "scale": self.scale, "rule": self.rule.to_spec(),
                "schedule": self.schedule.to_spec()}

    def __str__(self) -> str:
        return f"+ {self.rule}({self.reference}) × {self.schedule}, s={self.scale}"


class Guidance(BaseModel):
    """A complete guidance method. Strategies keep their per-run state privately; a session works on a copy."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    rule: Rule = Field(default_factory=CFG)
    scale: float | None = Field(None, validate_default=True, description="diffusers' w (λ for cfgpp); None: the rule's")
    reference: Reference = Field(default_factory=Uncond)
    schedule: Schedule = Field(default_factory=lambda: SCHEDULES.build("constant"))
    policy: Policy = Field(default_factory=Always)
    rescale: float = Field(0.0, ge=0.0, le=1.0, strict=True, description="guidance rescale φ (Lin et al.)")
    terms: list[Term] = Field(default_factory=list, description="extra terms rule_k(c, r_k, 1 + s_k) − c (§20)")
    attention: AttentionGuidance | None = Field(None, description="guidance inside the conditional pass (§35)")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            problems = explain(error, lambda path: f"'{'.'.join(path)}'", lambda path: list(Guidance.model_fields))
            raise GuidanceError("\n".join(problems)) from None

    _build = field_validator("rule", "reference", "schedule", "policy", mode="before")(classmethod(
        lambda cls, value, info: build_axis(info.field_name, value)))
    _build_attention = field_validator("attention", mode="before")(classmethod(
        lambda cls, value: None if value is None else build_axis("attention", value)))

    @field_validator("scale", mode="before")
    @classmethod
    def _number(cls, value: Any, info: Any) -> Any:
        if value is None:
            rule = info.data.get("rule")
            return None if rule is None else rule.default_scale
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"scale must be a number, not {type(value).__name__} {shorten(value)}")
        return float(value)

    @model_validator(mode="after")
    def _combination(self) -> Guidance:
        self.rule.check_scale(self.scale)
        if self.rule.corrects_sampler and isinstance(self.schedule, AbsoluteSchedule):
            raise GuidanceError(
                f"The schedule '{self.schedule.name}' sets w − 1 directly and has no meaning for CFG++'s λ. "
                "Combine cfgpp with a shape schedule (constant, linear, cosine, …) or interval."
            )
        if self.rule.predictor_corrector and self.policy.estimates:
            raise GuidanceError(
                f"Policy '{self.policy.name}' estimates the reference from a fit to the pipeline's own guided steps; "
                f"rule '{self.rule.name}' evaluates both branches in its corrector at other points, where that fit "
                "does not hold. Use policy always or adaptive with pcg."
            )
        if self.reference.reads_estimate and self.rule.corrects_sampler:
            raise GuidanceError(
                f"Rule '{self.rule.name}' renoises with the reference's noise estimate, and reference "
                f"'{self.reference.name}' is another class's prediction, not an unconditional one. Use rule cfg or "
                f"apg with {self.reference.name}, or {self.reference.name} as a term next to cfgpp's uncond reference."
            )
        if self.reference.reads_estimate and not isinstance(self.policy, Always):
            raise GuidanceError(
                f"Reference '{self.reference.name}' chooses every sample's reference from its conditional estimate, "
                f"so its rows cannot be skipped or estimated per sample as policy '{self.policy.name}' does. Use "
                f"policy: always, or put {self.reference.name} in a term next to the policy's main reference."
            )
        return self

    def start_run(self, steps: StepTable) -> tuple[list[float | None], list[list[float | None]]]:
        """Begin a pipeline call over `steps`: the strategies forget their per-run state; returns the main term's scale
        of every step and each term's s_i of every step (None: conditional only / off)."""
        for strategy in (self.rule, self.reference, *(x for term in self.terms for x in (term.rule, term.reference))):
            strategy.reset()
        scales = self.rule.step_scales(self.scale, self.schedule, steps)
        return scales, [term.step_scales(steps) for term in self.terms]

    def to_spec(self) -> dict[str, Any]:
        """A plain mapping that `load` turns back into an equal Guidance."""
        spec = {"scale": self.scale, "rule": self.rule.to_spec(), "reference": self.reference.to_spec(),
                "schedule": self.schedule.to_spec(), "policy": self.policy.to_spec(), "rescale": self.rescale}
        if self.terms:
            spec["terms"] = [term.to_spec() for term in self.terms]
        if self.attention is not None:
            spec["attention"] = self.attention.to_spec()
        return spec

    def __str__(self) -> str:
        return (f"{self.rule} × {self.reference} × {self.schedule} × {self.policy}, scale={self.scale}"
                + (f", rescale={self.rescale}" if self.rescale else "") + "".join(f" {t}" for t in self.terms)
                + (f" + attention {self.attention}" if self.attention is not None else ""))


def _guidance_section(path: Path) -> Mapping[str, Any]:
    config = read_yaml(path, "guidance spec file", "Pass an existing YAML run config (with a top-level `guidance:` "
                       "section) or a mapping such as {'rule': 'apg', 'scale': 7.5}.")
    if not isinstance(config, Mapping) or "guidance" not in config:
        raise GuidanceError(f"'{path}' has no top-level `guidance:` section. Add one, e.g.\n"
                            "guidance:\n  rule: apg\n  scale: 7.5")
    section = config["guidance"]
    return {} if section is None else section


def load(spec: Guidance | Mapping[str, Any] | str | Path | None = None) -> Guidance:
    """A validated Guidance from a Guidance, the `guidance:` mapping, or a YAML run-config path."""
    if isinstance(spec, Guidance):
        return spec
    if spec is None:
        spec = {}
    if isinstance(spec, str | Path):
        try:
            return load(_guidance_section(Path(spec)))
        except GuidanceError as error:
            raise GuidanceError(f"In '{spec}': {error}") from None
    if not isinstance(spec, Mapping):
        raise GuidanceError(f"A guidance spec must be a mapping, a YAML path or a Guidance, not "
                            f"{type(spec).__name__}. Example: {{'rule': 'apg', 'scale': 7.5}}.")
    return Guidance(**dict(spec))
