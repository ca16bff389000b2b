"""Nothing escapes the command line: over 1000 generated inputs across its four entry points — run config files,
`--set` values, `--grid` axes and seeds, and `guidance evaluate` settings files — every one ends in exit status 0,
1 (`validate`) or 2 with a message of short lines, never a Python traceback.

Valid inputs really run, on the bundled digits model, with the sampler cut to one step (run configs, --set,
--grid); evaluation settings run up to the metrics with random samples in place of sampling (the metrics, tables
and loading are real). Hypothesis draws the inputs from structured mappings, free YAML values and free text.
"""

from __future__ import annotations

import functools
import string

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from guidance.app import evaluate as evaluate_module
from guidance.app import generate as generate_module
from guidance.app import tasks as tasks_module
from guidance.app.cli import main

EXAMPLES = 270  # per entry point: 4 × 270 = 1080 inputs
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])

WORDS = st.sampled_from(["digits", "digits-no-dropout", "apg", "cfg", "cfgpp", "icg", "tsg", "adaptive", "linear",
                         "interval", "ddim", "euler", "flow_euler", "float16", "auto", "cpu", "cuda", "/no/such/model",
                         "a/b", "", "null", "x" * 300, "../..", "~"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    WORDS, st.text(max_size=40))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.one_of(WORDS, st.text(max_size=8)), inner,
                                                                       max_size=4)), max_leaves=12)


def section(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A mapping with some of `fields` (each a good or a free value) and sometimes a stray key."""
    return st.fixed_dictionaries({}, optional={**{k: st.one_of(v, VALUES) for k, v in fields.items()},
                                               "stray": VALUES})


GUIDANCE = section({"scale": st.floats(-2, 30), "rule": st.sampled_from(["cfg", "apg", "cfgpp", "cfg_zero_star"]),
                    "reference": st.sampled_from(["uncond", "icg", "tsg", ["icg", "tsg"]]),
                    "schedule": st.sampled_from(["constant", "linear", "interval", "clamp_cosine"]),
                    "policy": st.sampled_from(["always", "adaptive"]), "rescale": st.floats(-1, 2),
                    "terms": st.lists(section({"reference": st.sampled_from(["tsg", "pag", "slg", "uncond", "icg",
                                                                             {"name": "autoguidance",
                                                                              "model": "digits-weak"}]),
                                               "scale": st.floats(-1, 4), "schedule": st.sampled_from(["steps"])}),
                                      max_size=2)})
RUN_CONFIGS = section({
    "model": section({"path": WORDS, "dtype": st.sampled_from(["float32", "bfloat16"]), "device": WORDS}),
    "sampler": section({"scheduler": st.sampled_from(["default", "ddim", "euler", "ddpm", "flow_euler"]),
                        "steps": st.integers(0, 30), "seed": st.integers(-1, 5), "batch": st.integers(0, 3),
                        "eta": st.floats(-1, 2), "height": st.integers(0, 32)}),
    "guidance": GUIDANCE, "class_labels": st.lists(st.integers(-2, 12), max_size=3),
    "prompts": st.lists(st.text(max_size=10), max_size=2), "output": section({"prefix": WORDS})})
KEYS = st.one_of(st.sampled_from(["guidance.scale", "guidance.rule", "guidance.rule.eta", "guidance.policy",
                                  "guidance.reference", "sampler.steps", "sampler.scheduler", "sampler.batch",
                                  "model.path", "model.dtype", "class_labels", "prompts", "guidance", "sampler",
                                  "output.prefix", "guidance..scale", ".", "x.y.z"]),
                 st.text(alphabet=string.ascii_letters + "._", max_size=20))
TEXTS = st.one_of(st.sampled_from(["3", "7.5", "-1", "nan", "apg", "{name: apg, eta: 0}", "[1, 2]", "[1", "{", "",
                                   "!!python/object/apply:os.system ['touch pwned']", "'x'", "null", "1e999"]),
                  st.text(max_size=30))
GOOD_SETS = st.sampled_from([
    ("guidance.scale", "3"), ("guidance.scale", "0.5"), ("guidance.rule", "apg"), ("guidance.rule", "cfgpp"),
    ("guidance.rule", "{name: apg, eta: 0, norm_threshold: 1}"), ("guidance.rule", "cfg_zero_star"),
    ("guidance.policy", "adaptive"), ("guidance.reference", "[icg, tsg]"), ("guidance.reference", "tsg"),
    ("guidance.schedule", "interval"), ("guidance.schedule", "linear"), ("guidance.rescale", "0.7"),
    ("sampler.scheduler", "ddpm"), ("sampler.scheduler", "euler"), ("sampler.scheduler", "dpmpp_2m"),
    ("sampler.batch", "2"), ("sampler.eta", "1"), ("model.path", "digits-no-dropout")])
SETTINGS_FILES = section({
    "model": WORDS, "samples": st.integers(-5, 60), "steps": st.integers(0, 4), "guidance": GUIDANCE,
    "settings": st.lists(section({"name": WORDS, "guidance": GUIDANCE, "scales": st.lists(st.floats(0, 5), max_size=2),
                                  "steps": st.integers(0, 3), "eta": st.floats(-1, 2), "model": WORDS,
                                  "unconditional": st.booleans()}), max_size=3)})


@pytest.fixture
def quick(monkeypatch):
    """One sampling step per pipeline call; evaluation samples drawn at random instead of sampled."""
    call_kwargs = generate_module.call_kwargs

    def one_step(*args, **kwargs):
        return {**call_kwargs(*args, **kwargs), "num_inference_steps": 1}

    def random_samples(pipe, task, setting, seed, batch, progress=None):
        noise = torch.randn((len(task.grid_labels), *task.latent_shape(pipe)),
                            generator=torch.Generator().manual_seed(seed))
        return 1.5 * noise.tanh(), {"denoiser_rows": 0, "steps": []}, 0.0

    monkeypatch.setattr(generate_module, "call_kwargs", one_step)
    monkeypatch.setattr(evaluate_module, "generate", random_samples)
    monkeypatch.setattr(tasks_module, "load_digit_images", functools.cache(tasks_module.load_digit_images))


def ends_cleanly(capsys, argv: list[str], allowed: tuple[int, ...] = (0, 2)) -> None:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        status = exit_.code
    captured = capsys.readouterr()
    event(f"{argv[0]} exit {status}")  # `pytest --hypothesis-show-statistics` shows how many inputs ran through
    assert status in allowed, (argv, status, captured.err[-2000:])
    assert "Traceback" not in captured.err, (argv, captured.err[-2000:])
    assert all(len(line) < 1200 for line in captured.err.splitlines()), (argv, captured.err[:2000])


def write(tmp_path, data, name: str) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True))
    return str(path)


@SETTINGS
@given(data=st.one_of(RUN_CONFIGS, VALUES, st.text(max_size=80)))
def test_run_configs(tmp_path_factory, capsys, quick, data) -> None:
    folder = tmp_path_factory.mktemp("run")
    config = write(folder, data, "run.yaml")
    ends_cleanly(capsys, ["validate", config], (0, 1))
    ends_cleanly(capsys, ["generate", "-c", config, "--out", str(folder / "out"), "--no-progress"])


@SETTINGS
@given(assignments=st.lists(st.one_of(GOOD_SETS, st.tuples(KEYS, TEXTS)), min_size=1, max_size=3))
def test_set_values(tmp_path_factory, capsys, quick, assignments) -> None:
    folder = tmp_path_factory.mktemp("set")
    argv = ["generate", "--out", str(folder / "out"), "--no-progress", "--set", "class_labels=[3]"]
    for key, text in assignments:
        argv += ["--set", f"{key}={text}"]
    ends_cleanly(capsys, argv)


@SETTINGS
@given(axes=st.lists(st.one_of(GOOD_SETS.map(lambda pair: (pair[0], [pair[1], "1"])),
                              st.tuples(KEYS, st.lists(TEXTS, min_size=1, max_size=2))), max_size=2),
       seeds=st.one_of(st.sampled_from(["0", "0-1", "1,3", "3-2", "-1", "x", "", "0-", "9999999999999999999999"]),
                       st.text(alphabet=string.ascii_letters + ",- ", max_size=6)))
def test_grids(tmp_path_factory, capsys, quick, axes, seeds) -> None:
    folder = tmp_path_factory.mktemp("grid")
    argv = ["sweep", "--out", str(folder / "out"), "--no-progress", "--set", "class_labels=[3]", "--seeds", seeds]
    for key, values in axes:
        argv += ["--grid", f"{key}={','.join(values)}"]
    ends_cleanly(capsys, argv)


@SETTINGS
@given(data=st.one_of(SETTINGS_FILES, VALUES, st.text(max_size=80)))
def test_evaluation_settings(tmp_path_factory, capsys, quick, data) -> None:
    folder = tmp_path_factory.mktemp("evaluate")
    ends_cleanly(capsys, ["evaluate", "-c", write(folder, data, "settings.yaml"), "--no-progress"])
