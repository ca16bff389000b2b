"""Sweeps split over processes (accelerate's launcher, torchrun underneath; gloo on CPU): each pipeline call made
exactly once, the same bytes as a single-process run (but for the measured wall times), a restart makes only what is
missing, errors reported once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from guidance.app import sweep as sweep_module
from guidance.app.cli import main
from guidance.app.sweep import cells, pending, runs, share

# 4 cells × 2 seeds × 2 labels = 16 calls of 2 images each (a call's images share one generator)
ARGS = ["sweep", "--set", "class_labels=[7,2]", "--set", "sampler.batch=2", "--set", "sampler.steps=4",
        "--grid", "guidance.scale=1,3", "--grid", "guidance.rule=cfg,apg", "--seeds", "0-1", "--out", "sweep",
        "--no-progress"]
ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                     "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no",
                     "--dynamo_backend", "no", "-m", "guidance"]


def cli(cwd: Path, *command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def without_times(value: Any) -> Any:
    """`value` without the wall times ("seconds") it records: the one thing two runs cannot share."""
    if isinstance(value, dict):
        return {key: without_times(item) for key, item in value.items() if key != "seconds"}
    if isinstance(value, list):
        return [without_times(item) for item in value]
    return value


def contents(folder: Path) -> dict[str, Any]:
    """Every file under folder (hidden temporaries excluded) by relative path: its bytes, or for the JSON files and
    the page (its markup and the data it embeds) the content without wall times."""
    out: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        name = str(path.relative_to(folder))
        if path.suffix == ".json":
            out[name] = without_times(json.loads(path.read_text()))
        elif path.suffix == ".html":
            markup, data, rest = re.split(r'(?<=id="data">)(.*?)(?=</script>)', path.read_text(), maxsplit=1,
                                          flags=re.S)
            out[name] = (markup + rest, without_times(json.loads(data)))
        else:
            out[name] = path.read_bytes()
    return out


@contextmanager
def inside(folder: Path) -> Iterator[None]:
    here = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> tuple[Path, Path]:
    """The same sweep made by one process and by `--num-processes 2` (two `python -m guidance sweep` processes),
    each in its own folder; --out is relative, so sweep.json is the same text in both."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    with inside(one):
        assert main(ARGS) == 0
    with inside(two), pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        assert main([*ARGS, "--num-processes", "2"]) == 0
    return one / "sweep", two / "sweep"


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_share_gives_each_item_to_exactly_one_process(count) -> None:
    items = list(range(13))
    shares = [share(items, index, count) for index in range(count)]
    assert sorted(i for s in shares for i in s) == items
    assert all(item % count == index for index, s in enumerate(shares) for item in s)
    assert shares == [share(items, index, count) for index in range(count)]


def test_the_calls_and_their_seeds_do_not_depend_on_the_process_count(tmp_path) -> None:
    data = {"class_labels": [1, 2, 3], "sampler": {"seed": 10}}
    planned = cells(data, [("guidance.scale", [1.0, 3.0])], "<test>")
    tasks = pending(runs(planned, [0, 4], tmp_path), overwrite=False)
    assert len(tasks) == 2 * 2 * 3
    assert [t.job.seed for t in tasks[:6]] == [0, 1, 2, 4, 5, 6]  # the sweep's seed + the call's index
    for count in (2, 3, 4):
        merged = sorted(i for index in range(count) for i in share(range(len(tasks)), index, count))
        assert [tasks[i] for i in merged] == tasks


def test_two_processes_write_the_same_bytes_as_one(outputs) -> None:
    one, two = outputs
    reference = contents(one)
    assert len([name for name in reference if name.endswith(".png")]) == 4 * 2 * 4 + 1
    assert {"grid.png", "sweep.json", "index.html"} <= set(reference)
    assert contents(two) == reference


def test_a_restart_under_accelerate_launch_makes_only_the_missing_calls(outputs) -> None:
    one, two = outputs
    redo = [two / "guidance.scale-1-guidance.rule-apg" / "seed-1",
            two / "guidance.scale-3-guidance.rule-cfg" / "seed-0"]
    (redo[0] / "image-001-00.png").unlink()  # a call interrupted between its two images
    (redo[1] / "image-000-00.png").unlink()
    (redo[1] / "image-000-01.png").unlink()
    (two / "grid.png").unlink()
    redone = {redo[0] / "image-001-01.png"}
    kept = {p: p.stat().st_mtime_ns for p in two.rglob("*.png") if p not in redone}
    result = cli(two.parent, *ACCELERATE_LAUNCH, *ARGS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Wrote sweep/grid.png") == 1  # only the main process reports
    assert contents(two) == contents(one)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def test_an_error_in_every_process_is_reported_once(tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.chdir(tmp_path)  # the launcher runs here; its two processes are `python -m guidance sweep ...`
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main([*ARGS, "--set", "model.path=nowhere", "--num-processes", "2"]) == 2
    err = capfd.readouterr().err
    assert err.count("No model at 'nowhere'") == 1 and "Traceback" not in err
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize(("args", "missing", "message"), [
    (["--num-processes", "0"], None, "--num-processes 0: give 1 or more processes"),
    (["--num-processes", "2"], "accelerate.commands.launch", "--num-processes needs Hugging Face accelerate"),
    (["--num-processes", "1"], "accelerate", "guidance sweep needs Hugging Face accelerate"),
    (["--num-processes", "2", "--set", "sampler.steps=0"], None, "sampler.steps = 0"),
])
def test_bad_launches_exit_2_before_any_process_starts(tmp_path, monkeypatch, capsys, args, missing, message) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep_module, "launch", lambda *a: pytest.fail("launched"))
    if missing:
        monkeypatch.setitem(sys.modules, missing, None)  # import fails as if it were not installed
    assert main([*ARGS, *args]) == 2
    err = capsys.readouterr().err
    assert err.count(message) == 1 and "Traceback" not in err
    assert not list(tmp_path.rglob("*.png"))
