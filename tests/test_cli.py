"""The `guidance` command line as a user drives it: generate, sweep, validate, and every bad-input case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from guidance.app.cli import main
from guidance.app.config import validate
from guidance.app.generate import generate
from guidance.errors import GuidanceError

CONFIGS = Path(__file__).parents[1] / "configs"
FAST = ["--set", "sampler.steps=3", "--no-progress"]


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_generate_with_no_config_runs_the_bundled_digits_model(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["generate", *FAST]) == 0
    files = sorted((tmp_path / "outputs").glob("*.png"))
    assert len(files) == 10 and "Wrote 10 images" in capsys.readouterr().out
    with Image.open(files[3]) as image:
        config, item = json.loads(image.text["guidance:config"]), json.loads(image.text["guidance:item"])
        versions = json.loads(image.text["guidance:versions"])
    assert config["model"]["path"] == "digits" and config["sampler"]["steps"] == 3
    assert config["guidance"]["rule"] == {"name": "cfg"} and item == {"index": 3, "image": 0, "item": 3, "seed": 3}
    assert {"diffusers-guidance", "diffusers", "torch"} <= set(versions)


def test_set_overrides_and_from_image_regenerates_bit_for_bit(tmp_path) -> None:
    out = tmp_path / "out"
    args = ["generate", "-c", str(CONFIGS / "digits-apg.yaml"), "--set", "guidance.scale=5", "--set",
            "sampler.batch=2", "--set", "class_labels=[4, 9]", "--out", str(out), *FAST]
    assert main(args) == 0
    original = out / "image-001-01.png"
    with Image.open(original) as image:
        assert json.loads(image.text["guidance:config"])["guidance"]["scale"] == 5.0
    assert main(["generate", "--from-image", str(original), "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    assert pixels(tmp_path / "again" / "image-001-01.png") == pixels(original)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["image-001-01.png"]


def test_no_overwrite_without_the_flag(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["generate", "--out", str(out), *FAST, "--set", "class_labels=[1]"]) == 0
    before = pixels(out / "image-000-00.png")
    assert main(["generate", "--out", str(out), *FAST, "--set", "class_labels=[1]", "--set", "guidance.scale=9"]) == 2
    assert "--overwrite" in capsys.readouterr().err and pixels(out / "image-000-00.png") == before
    assert main(["generate", "--out", str(out), *FAST, "--set", "class_labels=[1]", "--set", "guidance.scale=9",
                 "--overwrite"]) == 0
    assert pixels(out / "image-000-00.png") != before


BAD = [
    ("sampler: {stepz: 3}", "sampler.stepz: unknown key. Did you mean 'steps'?"),
    ("sampler: {steps: many}", "sampler.steps = 'many'"),
    ("guidance: {rule: apgg}", "Did you mean 'apg'"),
    ("guidance: {rule: {name: apg, eta: x}}", "parameter 'eta' = 'x'"),
    ("sampler: [unclosed", "not valid YAML"),
    ("model: {path: /no/such/model}", "No model at '/no/such/model'"),
    ("prompts: [a cat]", "is class-conditional: give `class_labels`"),
    ("sampler: {height: 64}", "has no `height` argument"),
    ("prompts: [a]\nclass_labels: [1]", "not both"),
    ("class_labels: [3, 12]", "outside the 10 classes"),
    ("- just\n- a list", "is a mapping"),
    ("!!python/object/apply:os.system ['touch pwned']", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[1][:30] for b in BAD])
def test_bad_configs_exit_2_with_one_clear_message_and_no_files(tmp_path, capsys, text, message) -> None:
    config = write(tmp_path, text)
    out = tmp_path / "out"
    assert main(["generate", "-c", str(config), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["generate", "-c", "no-such.yaml"], "No config file at 'no-such.yaml'"),
    (["generate", "--set", "guidance.scale"], "write key.path=value"),
    (["generate", "--set", "sampler.steps=3.5"], "sampler.steps = 3.5"),
    (["sweep", "--grid", "guidance.scale"], "--grid 'guidance.scale'"),
    (["sweep", "--grid", "guidance.scale=1,2", "--seeds", "x-y"], "--seeds 'x-y'"),
])
def test_bad_arguments_exit_2(tmp_path, monkeypatch, capsys, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unwritable_output_folder(tmp_path, capsys) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["generate", "--out", str(blocker / "sub"), *FAST]) == 2
    assert "Cannot write to the output folder" in capsys.readouterr().err


def test_from_image_needs_guidance_metadata(tmp_path, capsys) -> None:
    plain = tmp_path / "plain.png"
    Image.new("L", (4, 4)).save(plain)
    assert main(["generate", "--from-image", str(plain)]) == 2
    assert "carries no guidance metadata" in capsys.readouterr().err


def test_validate_reports_every_error_with_file_and_field(tmp_path, capsys) -> None:
    good = write(tmp_path, "guidance: {rule: apg}\nsampler: {steps: 10}", "good.yaml")
    bad = write(tmp_path, "sampler: {steps: 0, seed: -1}\noutput: {dri: x}", "bad.yaml")
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert f"{good}: valid" in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(str(bad)) for line in lines)
    assert any("sampler.steps = 0" in line and "greater than or equal to 1" in line for line in lines)
    assert any("output.dri: unknown key. Did you mean 'dir'?" in line for line in lines)


def test_sweep_writes_a_labelled_grid_and_resumes(tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "--set", "class_labels=[7]", "--grid", "guidance.scale=1,3", "--grid", "guidance.rule=cfg,apg",
            "--seeds", "0-1", "--out", str(out), *FAST]
    assert main(args) == 0
    record = json.loads((out / "sweep.json").read_text())
    assert [c["cell"] for c in record["cells"]] == ["guidance.scale=1, guidance.rule=cfg",
                                                    "guidance.scale=1, guidance.rule=apg",
                                                    "guidance.scale=3, guidance.rule=cfg",
                                                    "guidance.scale=3, guidance.rule=apg"]
    files = [Path(f) for cell in record["cells"] for f in cell["images"]]
    assert len(files) == 8 and all(f.is_file() for f in files)
    with Image.open(files[-1]) as image:
        config = json.loads(image.text["guidance:config"])
    assert config["guidance"]["rule"]["name"] == "apg" and config["sampler"]["seed"] == 1
    with Image.open(out / "grid.png") as grid:
        assert grid.width > 2 * 16 and grid.height > 4 * 16
    stamps = [f.stat().st_mtime_ns for f in files]
    files[0].unlink()  # an interrupted sweep: one image missing
    assert main(args) == 0
    assert files[0].is_file() and [f.stat().st_mtime_ns for f in files[1:]] == stamps[1:]


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.floats(-2, 20, allow_nan=False),
                   st.text(max_size=8), st.lists(st.integers(-1, 12), max_size=3))
sections = {
    "sampler": st.fixed_dictionaries({}, optional={"steps": st.integers(-1, 2), "seed": values, "batch": values,
                                                   "eta": values, "scheduler": st.sampled_from(
                                                       ["default", "ddim", "euler", "flow_euler", "bogus"]),
                                                   "stepz": values}),
    "guidance": st.fixed_dictionaries({}, optional={
        "scale": values, "rule": st.sampled_from(["cfg", "apg", "cfgpp", "cfg_zero_star", "nope", 3]),
        "reference": st.sampled_from(["uncond", "icg", "tsg", ["icg", "tsg"], "uncond2"]),
        "schedule": st.sampled_from(["constant", "linear", "interval", "clamp_linear", {"name": "pcs", "kappa": 0}]),
        "policy": st.sampled_from(["always", "adaptive", {"name": "adaptive", "threshold": 3}]),
        "rescale": values}),
    "class_labels": st.one_of(values, st.lists(st.integers(-1, 10), min_size=1, max_size=2)),
    "prompts": st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=2)),
    "model": st.fixed_dictionaries({}, optional={"path": st.sampled_from(["digits", "digits-no-dropout", "x/y"]),
                                                 "dtype": st.sampled_from(["float32", "float64"])}),
    "extra": values,
}
mappings = st.fixed_dictionaries({}, optional=sections)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mappings)
def test_fuzzed_configs_run_or_fail_cleanly(data, tmp_path_factory) -> None:
    """Any mapping either validates and runs, or gets a GuidanceError — never another exception."""
    text = yaml.safe_dump(data)
    try:
        config = validate(yaml.safe_load(text), "fuzz.yaml")
    except GuidanceError as error:
        assert str(error)
        return
    if config.model.path == "x/y" or config.sampler.steps > 2:
        return  # valid, but would need the hub / take too long here
    config = config.model_copy(update={"class_labels": (config.class_labels or [0])[:1]})
    try:
        generate(config, tmp_path_factory.mktemp("fuzz"), progress=False)
    except GuidanceError as error:
        assert str(error)


def test_fit_linear_ag_then_generate_with_it(tmp_path, capsys) -> None:
    coefficients = tmp_path / "linear-ag.json"
    assert main(["fit-linear-ag", "--set", "sampler.steps=6", "--set", "sampler.batch=3", "--out",
                 str(coefficients)]) == 0
    record = json.loads(coefficients.read_text())
    assert record["num_inference_steps"] == 6 and record["fitted_on"]["samples"] == 30
    assert main(["fit-linear-ag", "--out", str(coefficients)]) == 2  # no overwrite
    spec = f"guidance.policy={{name: linear_ag, coefficients: {coefficients}}}"
    assert main(["generate", "--set", "sampler.steps=6", "--set", spec, "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert main(["generate", "--set", "sampler.steps=5", "--set", spec, "--out", str(tmp_path / "bad"),
                 "--no-progress"]) == 2
    assert "fitted for sampler" in capsys.readouterr().err


