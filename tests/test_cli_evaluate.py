"""`guidance evaluate` as a user runs it: tables, grids and plots; clean errors and exit codes."""

from __future__ import annotations

import csv

import pytest

from guidance.app.cli import main
from guidance.spec import AXES

SETTINGS = """\
samples: 20
steps: 4
settings:
  - name: cfg
    guidance: {rule: cfg}
    scales: [1, 3]
  - name: ag
    guidance: {policy: {name: adaptive, threshold: 0.9}}
    scales: [3]
"""


def test_evaluate_writes_tables_grids_and_plots(tmp_path, capsys) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(SETTINGS)
    out = tmp_path / "out"
    assert main(["evaluate", "-c", str(config), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| cfg w=3 |" in printed and "results.md" in printed
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["setting"] for r in rows] == ["cfg w=1", "cfg w=3", "ag w=3"]
    assert float(rows[0]["rows_per_sample"]) == 4 and float(rows[1]["rows_per_sample"]) == 8
    assert float(rows[2]["rows_per_sample"]) < 8
    assert "real digits" in (out / "results.md").read_text()
    assert {p.name for p in (out / "grids").iterdir()} == {"cfg-w-1.png", "cfg-w-3.png", "ag-w-3.png"}
    assert (out / "plots" / "metrics.png").stat().st_size > 0
    assert {p.name for p in (out / "plots").glob("telemetry-*.png")} == {"telemetry-cfg.png", "telemetry-ag.png"}


def test_evaluate_refuses_a_non_empty_output_folder(tmp_path, capsys) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(SETTINGS)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["evaluate", "-c", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(("text", "message"), [
    ("settings: [{name: x, guidance: {rule: apgg}}]", "Did you mean 'apg'"),
    ("settings: [{name: x, guidanse: {}}]", "settings.0.guidanse: unknown key. Did you mean 'guidance'?"),
    ("settings: [unclosed", "not valid YAML"),
    ("settings: [{name: x, guidance: {scale: -1}}]", "out of range"),
    ("settings: [{guidance: {}, steps: many}]", "settings.0.steps = 'many'"),
    ("settings: [{guidance: {}, eta: [1]}]", "settings.0.eta = [1]"),
    ("settings: [{guidance: {}, scales: 3}]", "settings.0.scales = 3"),
    ("settings: [{guidance: {}, scales: [w]}]", "settings.0.scales.0 = 'w'"),
    ("settings: [{guidance: 3}]", "settings.0.guidance = 3"),
    ("guidance: " + "x" * 5000, "guidance = 'xxxx"),
    ("samples: 3\nsettings: [{guidance: {}}]", "samples = 3"),
    ("samples: lots", "samples = 'lots'"),
    ("settings: []", "settings = []"),
    ("settings: [{guidance: {}, model: /no/such/model}]", "no bundled model or pipeline folder '/no/such/model'"),
])
def test_evaluate_bad_settings_exit_2_with_a_message(tmp_path, capsys, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["evaluate", "-c", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err and "Traceback" not in err
    assert len(err) < 1000  # bad values are echoed shortened


def test_evaluate_missing_file(tmp_path, capsys) -> None:
    assert main(["evaluate", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "No settings file" in capsys.readouterr().err


def test_list_shows_every_strategy_with_parameters_and_paper(capsys) -> None:
    import guidance

    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for registry in (guidance.RULES, guidance.REFERENCES, guidance.SCHEDULES, guidance.POLICIES):
        for cls in registry.classes():
            assert f"  {cls.name} " in printed
    assert "norm_threshold (float or null, default 15.0)" in printed and "arXiv 2410.02416" in printed
    marks = [line.split(": ", 1)[1] for line in printed.splitlines() if "modular guider (guidance.as_guider)" in line]
    assert len(marks) == sum(len(r.classes()) for r in AXES.values())
    refused = {cls.name for r in AXES.values() for cls in r.classes() if cls.guider_refusal}
    assert refused == {"pcg", "gfcg", "nag"}
    assert marks.count("yes") == len(marks) - 3
