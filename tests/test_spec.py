"""The `guidance:` spec: guidance.load from a dict, a YAML run config or a Guidance; defaults; each axis as a name or
a mapping; to_spec round trips; specs are never mutated; every user error is one helpful GuidanceError paragraph."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

import guidance
from guidance import POLICIES, REFERENCES, RULES, SCHEDULES, Guidance, GuidanceError
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales

AXES = {"rule": RULES, "reference": REFERENCES, "schedule": SCHEDULES, "policy": POLICIES}


def error_of(spec) -> str:
    """The message of the GuidanceError `guidance.load(spec)` raises, checked to be one non-empty paragraph."""
    with pytest.raises(GuidanceError) as info:
        guidance.load(spec)
    return one_paragraph(str(info.value))


def one_paragraph(message: str) -> str:
    assert message.strip(), "empty error message"
    assert "\n\n" not in message.strip(), f"more than one paragraph: {message!r}"
    assert "Traceback" not in message, message
    return message


def write_config(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def coefficients(tmp_path) -> str:
    path = tmp_path / "linear_ag.json"
    path.write_text(json.dumps({"format": "diffusers-guidance/linear_ag", "version": 1, "steps": []}))
    return str(path)


# ---------------------------------------------------------------------------------------------------- sources


def test_defaults():
    g = guidance.load({})
    assert isinstance(g, Guidance)
    assert (g.rule.name, g.reference.name, g.schedule.name, g.policy.name) == ("cfg", "uncond", "constant", "always")
    assert g.scale == 7.5
    assert g.rescale == 0.0
    assert guidance.load(None).to_spec() == g.to_spec()


def test_cfgpp_default_scale():
    g = guidance.load({"rule": "cfgpp"})
    assert g.rule.name == "cfgpp"
    assert g.scale == 0.6
    assert g.to_spec()["scale"] == 0.6


def test_load_from_dict():
    g = guidance.load({"scale": 3, "rule": "apg", "reference": "tsg", "schedule": "linear", "policy": "adaptive",
                       "rescale": 0.5})
    assert g.scale == 3.0 and isinstance(g.scale, float)
    assert (g.rule.name, g.reference.name, g.schedule.name, g.policy.name) == ("apg", "tsg", "linear", "adaptive")
    assert g.rescale == 0.5


@pytest.mark.parametrize("as_path", (True, False))
def test_load_from_yaml_run_config(tmp_path, as_path):
    path = write_config(tmp_path, """
model: {path: tiny}
sampler: {steps: 4}
guidance:
  scale: 10
  rule: {name: apg, eta: 0.0, norm_threshold: 7.5, momentum: -0.75}
  schedule: {name: interval, sigma_lo: 0.3, sigma_hi: 4.0}
  policy: {name: adaptive, threshold: 0.995}
prompts: [a cat]
""")
    g = guidance.load(path if as_path else str(path))
    assert g.scale == 10.0
    assert g.rule.to_spec() == {"name": "apg", "eta": 0.0, "norm_threshold": 7.5, "momentum": -0.75}
    assert (g.schedule.sigma_lo, g.schedule.sigma_hi) == (0.3, 4.0)
    assert g.policy.threshold == 0.995
    assert g.reference.name == "uncond"


def test_yaml_empty_guidance_section_gives_defaults(tmp_path):
    path = write_config(tmp_path, "model: tiny\nguidance:\n")
    assert guidance.load(path).to_spec() == guidance.load({}).to_spec()


def test_load_from_guidance_instance():
    g = guidance.load({"rule": "apg", "scale": 4})
    before = g.to_spec()
    again = guidance.load(g)
    assert again == g
    assert again.to_spec() == before
    assert g.to_spec() == before


def test_guidance_instance_built_directly():
    g = Guidance(scale=2.0, rule="cfg_zero_star", schedule={"name": "pcs", "kappa": 3.0})
    loaded = guidance.load(g)
    assert loaded.rule.name == "cfg_zero_star"
    assert loaded.schedule.kappa == 3.0
    assert loaded.scale == 2.0


# ---------------------------------------------------------------------------------------------------- axes


ALL_NAMES = [(axis, name) for axis, registry in AXES.items() for name in registry.names()]

PARAMS = {
    ("rule", "apg"): {"eta": 0.25, "norm_threshold": 5.0, "momentum": 0.0},
    ("rule", "cfg_zero_star"): {"zero_init_steps": 2},
    ("reference", "icg"): {"source": "gaussian", "seed": 4},
    ("reference", "tsg"): {"s": 0.5, "alpha": 2.0, "seed": 1},
    ("schedule", "pcs"): {"kappa": 3.0},
    ("schedule", "clamp_linear"): {"c": 1.0},
    ("schedule", "clamp_cosine"): {"c": 0.5},
    ("schedule", "interval"): {"sigma_lo": 0.1, "sigma_hi": 3.0},
    ("schedule", "experts"): {"scale_2": 3.0, "boundary": 0.875},
    ("policy", "adaptive"): {"threshold": 0.95},
}


def test_registries_hold_the_designed_names():
    assert set(RULES.names()) == {"cfg", "apg", "cfgpp", "cfg_zero_star", "tcfg", "fdg", "pcg"}
    assert set(REFERENCES.names()) == {"uncond", "icg", "tsg", "combined", "pag", "seg", "slg", "stg", "autoguidance",
                                       "gfcg"}
    assert set(SCHEDULES.names()) == {"constant", "linear", "cosine", "inverse_linear", "sine", "v_shape",
                                      "lambda_shape", "clamp_linear", "clamp_cosine", "pcs", "interval", "steps",
                                      "pag_adaptive", "experts"}
    assert set(POLICIES.names()) == {"always", "adaptive", "linear_ag"}


@pytest.mark.parametrize(("axis", "name"), ALL_NAMES)
def test_axis_as_name_or_mapping(axis, name, coefficients):
    required = {"linear_ag": {"coefficients": coefficients}, "combined": {"of": ["icg", "tsg"]},
                "autoguidance": {"model": "digits-weak"}, "experts": {"scale_2": 3.0}, "gfcg": {"classifier": "digits"}}
    if name in required:
        with pytest.raises(GuidanceError, match=next(iter(required[name]))):
            guidance.load({axis: name})  # its one parameter is required
        by_name = None
    else:
        by_name = guidance.load({axis: name})
        assert getattr(by_name, axis).name == name
        assert type(getattr(by_name, axis)) is AXES[axis].get(name)
    mapping = {"name": name, **required.get(name, {})}
    by_mapping = guidance.load({axis: mapping})
    assert getattr(by_mapping, axis).name == name
    if by_name is not None:
        assert getattr(by_mapping, axis) == getattr(by_name, axis)


@pytest.mark.parametrize(("axis", "name"), list(PARAMS))
def test_axis_mapping_with_params(axis, name):
    params = PARAMS[(axis, name)]
    g = guidance.load({axis: {"name": name, **params}})
    strategy = getattr(g, axis)
    for key, value in params.items():
        assert getattr(strategy, key) == value
    assert strategy.to_spec() == {**strategy.to_spec(), "name": name, **params}


def test_axis_as_strategy_instance():
    apg = RULES.build({"name": "apg", "eta": 1.0})
    g = guidance.load({"rule": apg, "schedule": SCHEDULES.build("cosine")})
    assert g.rule.eta == 1.0 and g.schedule.name == "cosine"


def test_strategy_of_the_wrong_axis():
    message = error_of({"rule": SCHEDULES.build("linear")})
    assert "linear" in message and "schedule" in message and "rule" in message


# ---------------------------------------------------------------------------------------------------- round trips


ROUND_TRIP_SPECS = [
    {"scale": 3.0},
    {"scale": 12, "rule": {"name": "apg", "eta": 0.5, "norm_threshold": None, "momentum": -0.75}, "rescale": 0.7},
    {"rule": "cfgpp", "scale": 0.4, "schedule": {"name": "pcs", "kappa": 1.5}},
    {"scale": 4, "reference": {"name": "icg", "source": "gaussian", "seed": 3},
     "schedule": {"name": "interval", "sigma_lo": 0.1, "sigma_hi": 2.0}, "policy": {"name": "adaptive",
                                                                                  "threshold": 0.95}},
    {"scale": 2, "rule": {"name": "cfg_zero_star", "zero_init_steps": 0}, "reference": {"name": "tsg", "s": 2.0,
                                                                                       "alpha": 0.5}},
    {"scale": 5, "schedule": {"name": "clamp_cosine", "c": 1.0}},
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS, ids=str)
def test_to_spec_round_trips(spec, tmp_path):
    g = guidance.load(spec)
    plain = g.to_spec()
    assert set(plain) == {"scale", "rule", "reference", "schedule", "policy", "rescale"}
    assert guidance.load(plain) == g
    assert guidance.load(plain).to_spec() == plain
    # the plain mapping is YAML-safe and survives a run-config file
    path = write_config(tmp_path, yaml.safe_dump({"guidance": plain}))
    assert guidance.load(path) == g


def test_to_spec_round_trips_default_scale():
    """`to_spec` promises "a plain mapping that `load` turns back into an equal Guidance", also without a scale."""
    g = guidance.load({"rule": "apg"})
    assert guidance.load(g.to_spec()) == g


def test_linear_ag_round_trip(coefficients):
    g = guidance.load({"policy": {"name": "linear_ag", "coefficients": coefficients}})
    assert g.to_spec()["policy"] == {"name": "linear_ag", "coefficients": coefficients}
    assert guidance.load(g.to_spec()).policy == g.policy


# ---------------------------------------------------------------------------------------------------- no mutation


NESTED_SPEC = {"scale": 4, "rule": {"name": "apg", "eta": 0.0, "norm_threshold": 5.0, "momentum": -0.5},
               "schedule": {"name": "linear"}, "reference": {"name": "uncond"}, "policy": {"name": "always"},
               "rescale": 0.3}


def test_load_does_not_mutate_dict():
    spec = copy.deepcopy(NESTED_SPEC)
    guidance.load(spec)
    assert spec == NESTED_SPEC
    spec = {"rule": "cfgpp"}
    guidance.load(spec)
    assert spec == {"rule": "cfgpp"}


def test_run_does_not_mutate_dict_or_guidance():
    pipe = tiny_pipeline("sd")
    kwargs = strip_scales(tiny_call_kwargs("sd", batch=2, num_inference_steps=4))
    spec = copy.deepcopy(NESTED_SPEC)
    first = output_tensor(guidance.run(pipe, spec, **kwargs))
    assert spec == NESTED_SPEC
    g = guidance.load(NESTED_SPEC)
    before = g.to_spec()
    kwargs = strip_scales(tiny_call_kwargs("sd", batch=2, num_inference_steps=4))
    second = output_tensor(guidance.run(pipe, g, **kwargs))
    assert g.to_spec() == before
    assert g == guidance.load(NESTED_SPEC)  # includes the APG momentum buffer (private state)
    assert g.rule._running is None
    # and the same spec from a dict and from a Guidance give the same result
    assert (first - second).abs().max() == 0


def test_run_from_yaml_path(tmp_path):
    path = write_config(tmp_path, "guidance:\n  scale: 3\n  schedule: linear\n")
    pipe = tiny_pipeline("sd")
    st: dict = {}
    guidance.run(pipe, path, stats=st, **strip_scales(tiny_call_kwargs("sd", batch=2, num_inference_steps=5)))
    # linear over 5 steps: f = 2p = 0, .5, 1, 1.5, 2 → w = 1 + 2f
    assert [s["w"] for s in st["steps"]] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("axis", "bad", "close"),
    [("rule", "apgg", "apg"), ("rule", "cfg_plus_plus", None), ("reference", "uncnd", "uncond"),
     ("schedule", "lineer", "linear"), ("schedule", "v-shape", "v_shape"), ("policy", "adaptiv", "adaptive")],
)
@pytest.mark.parametrize("as_mapping", (False, True))
def test_unknown_name(axis, bad, close, as_mapping):
    message = error_of({axis: {"name": bad} if as_mapping else bad})
    assert bad in message
    assert axis in message
    if close is not None:
        assert "did you mean" in message.lower()
        assert f"'{close}'" in message
    for name in AXES[axis].names():
        assert name in message


def test_unknown_name_without_close_match_still_lists_choices():
    message = error_of({"rule": "zzzz"})
    assert "zzzz" in message and "did you mean" not in message.lower()
    assert all(name in message for name in RULES.names())


@pytest.mark.parametrize(
    ("axis", "spec", "field", "close"),
    [("rule", {"name": "apg", "etaa": 0.0}, "etaa", "eta"),
     ("rule", {"name": "apg", "momentun": 0.0}, "momentun", "momentum"),
     ("schedule", {"name": "pcs", "kapa": 2.0}, "kapa", "kappa"),
     ("schedule", {"name": "interval", "sigma_low": 0.1}, "sigma_low", "sigma_lo"),
     ("policy", {"name": "adaptive", "treshold": 0.9}, "treshold", "threshold"),
     ("rule", {"name": "cfg", "eta": 0.0}, "eta", None)],
)
def test_unknown_parameter(axis, spec, field, close):
    message = error_of({axis: spec})
    assert f"'{field}'" in message
    assert spec["name"] in message
    if close is not None:
        assert "did you mean" in message.lower() and f"'{close}'" in message
    for parameter in AXES[axis].get(spec["name"]).model_fields:
        assert parameter in message


def test_mapping_without_name():
    message = error_of({"rule": {"eta": 0.0}})
    assert "name" in message and all(n in message for n in RULES.names())


def test_axis_of_wrong_type():
    message = error_of({"schedule": 3})
    assert "schedule" in message and "int" in message


@pytest.mark.parametrize(
    ("spec", "words"),
    [({"rule": {"name": "apg", "eta": "x"}}, ("eta", "'x'", "number")),
     ({"rule": {"name": "apg", "eta": "0.5"}}, ("eta", "'0.5'")),
     ({"reference": {"name": "icg", "seed": 1.5}}, ("seed", "1.5", "integer")),
     ({"reference": {"name": "tsg", "seed": "1"}}, ("seed", "'1'")),
     ({"rule": {"name": "apg", "eta": True}}, ("eta", "True")),
     ({"schedule": {"name": "pcs", "kappa": True}}, ("kappa", "True")),
     ({"schedule": {"name": "interval", "sigma_hi": False}}, ("sigma_hi", "False")),
     ({"rule": {"name": "cfg_zero_star", "zero_init_steps": 1.5}}, ("zero_init_steps", "1.5")),
     ({"reference": {"name": "icg", "source": "text"}}, ("source", "'text'", "class", "prompt", "gaussian")),
     ({"scale": "7"}, ("scale", "'7'", "number")),
     ({"scale": True}, ("scale", "True")),
     ({"rescale": "x"}, ("rescale", "'x'"))],
    ids=str,
)
def test_wrong_parameter_type(spec, words):
    message = error_of(spec)
    for word in words:
        assert word in message


@pytest.mark.parametrize("value", (True, "0.5"), ids=repr)
def test_rescale_wrong_type(value):
    """`rescale` is a float φ ∈ [0, 1]: a bool or a string is a type error like for `scale` and every parameter."""
    message = error_of({"rescale": value})
    assert "rescale" in message


@pytest.mark.parametrize(
    ("spec", "words"),
    [({"rule": "cfgpp", "scale": 1.5}, ("1.5", "[0, 1]")),
     ({"rule": "cfgpp", "scale": -0.1}, ("-0.1", "[0, 1]")),
     ({"rescale": 2}, ("rescale", "2", "1")),
     ({"rescale": -0.5}, ("rescale", "-0.5", "0")),
     ({"scale": -1}, ("-1", "≥ 0")),
     ({"scale": float("nan")}, ("nan",)),
     ({"scale": float("inf")}, ("inf",)),
     ({"schedule": {"name": "pcs", "kappa": 0}}, ("kappa", "0", "greater than 0")),
     ({"schedule": {"name": "pcs", "kappa": -1.0}}, ("kappa", "-1")),
     ({"schedule": {"name": "interval", "sigma_lo": 2.0, "sigma_hi": 1.0}}, ("sigma_lo", "sigma_hi", "2.0", "1.0")),
     ({"schedule": {"name": "interval", "sigma_lo": 1.0, "sigma_hi": 1.0}}, ("sigma_lo", "sigma_hi")),
     ({"schedule": {"name": "interval", "sigma_lo": 6.0}}, ("sigma_lo", "sigma_hi", "6.0", "5.42")),
     ({"schedule": {"name": "clamp_linear", "c": -1.0}}, ("'c'", "-1")),
     ({"policy": {"name": "adaptive", "threshold": 2}}, ("threshold", "2", "1")),
     ({"reference": {"name": "icg", "seed": -1}}, ("seed", "-1")),
     ({"rule": {"name": "apg", "norm_threshold": 0.0}}, ("norm_threshold", "0"))],
    ids=str,
)
def test_out_of_range(spec, words):
    message = error_of(spec)
    for word in words:
        assert word in message


@pytest.mark.parametrize(("bad", "close"), [("sclae", "scale"), ("schedul", "schedule"), ("polcy", "policy"),
                                            ("guidance_rescale", "rescale"), ("zzz", None)])
def test_unknown_top_level_key(bad, close):
    message = error_of({"scale": 3, bad: 1})
    assert f"'{bad}'" in message
    if close is not None:
        assert "did you mean" in message.lower() and f"'{close}'" in message
    for key in ("scale", "rule", "reference", "schedule", "policy", "rescale"):
        assert key in message


def test_spec_of_wrong_type():
    message = error_of(42)
    assert "int" in message and "mapping" in message


def test_missing_yaml_file(tmp_path):
    path = tmp_path / "missing.yaml"
    message = error_of(path)
    assert str(path) in message
    assert "guidance:" in message


def test_missing_yaml_file_as_string(tmp_path):
    message = error_of(str(tmp_path / "nope" / "run.yml"))
    assert "run.yml" in message


@pytest.mark.parametrize("text", ["guidance: {rule: [apg\n", "guidance:\n  rule: apg\n   scale: 3\n\tbad: tab\n",
                                  "guidance: 'unterminated\n"])
def test_malformed_yaml(tmp_path, text):
    path = write_config(tmp_path, text)
    message = error_of(path)
    assert str(path) in message
    assert "YAML" in message


@pytest.mark.parametrize("text", ["model: tiny\nsampler: {steps: 4}\n", "", "- guidance\n- rule\n", "just text\n",
                                  "Guidance:\n  rule: apg\n"])
def test_yaml_without_guidance_section(tmp_path, text):
    path = write_config(tmp_path, text)
    with pytest.raises(GuidanceError) as info:
        guidance.load(path)
    message = str(info.value)  # holds a short YAML example, so it is allowed several lines
    assert str(path) in message
    assert "guidance:" in message


def test_yaml_guidance_error_names_the_file(tmp_path):
    """Config errors name the file, the field path and the allowed values."""
    path = write_config(tmp_path, "guidance:\n  rule: apgg\n")
    message = error_of(path)
    assert "apgg" in message and "'apg'" in message
    assert str(path) in message or path.name in message


def test_linear_ag_missing_coefficients_file(tmp_path):
    path = tmp_path / "never_fitted.json"
    message = error_of({"policy": {"name": "linear_ag", "coefficients": str(path)}})
    assert str(path) in message
    assert "coefficients" in message
    assert "fit_linear_ag" in message


def test_linear_ag_without_coefficients():
    message = error_of({"policy": "linear_ag"})
    assert "coefficients" in message and "linear_ag" in message
    assert "required" in message.lower()
    assert "PydanticUndefined" not in message  # the parameter list must not leak pydantic internals


@pytest.mark.parametrize("name", ("clamp_linear", "clamp_cosine"))
def test_cfgpp_with_clamp_refused(name):
    message = error_of({"rule": "cfgpp", "schedule": name})
    assert name in message and "cfgpp" in message


def test_errors_are_value_errors():
    """GuidanceError is the one user-facing error type; it is a ValueError."""
    assert issubclass(GuidanceError, ValueError)
    with pytest.raises(ValueError):
        guidance.load({"rule": "nope"})
