"""`guidance bench`: its instruments and its refusals (the measurements themselves live in benchmarks/)."""

import json

import pytest
import torch

from guidance.app import bench
from guidance.app.cli import main
from guidance.pipelines.bundled import BUNDLED


def test_saving_counts_rows_as_the_coefficient_file_plans_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the bundled coefficient files are found from any working directory
    rows = {r["setting"]: r for r in bench.saving(samples=20, progress=False)}
    plan = json.loads((BUNDLED["digits"] / "linear-ag-25-every3.json").read_text())["steps"]
    real = sum(step["mode"] == "real" for step in plan)
    assert rows["cfg"]["rows_per_sample"] == 50  # 25 steps, two rows each
    assert rows["linear_ag (every 3rd guided step real)"]["rows_per_sample"] == 25 + real
    assert rows["linear_ag (every 3rd guided step real)"]["rows_saved"] == pytest.approx(1 - (25 + real) / 50)
    assert 0 < rows["adaptive (γ̄ = 0.99)"]["rows_saved"] < 0.5
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows.values())


def test_bench_writes_json_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "syncs.json"
    args = ["bench", "syncs", "--pipeline", "tiny", "--steps", "2", "--variants", "cfg,apg", "--json", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert [r["variant"] for r in data["rows"]] == [bench.NATIVE, "cfg", "apg"]
    assert data["command"].startswith("guidance bench syncs") and data["machine"]
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--variants", "cfg,nope"], "Unknown --variants ['nope']"),
    (["--device", "cuda"], "no CUDA device"),
    (["--repeats", "0"], "--repeats 0: give 1 or more"),
    (["--json", "README.md/out.json"], "is not a writable folder"),
])
def test_bench_bad_input(args, message, capsys):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert main(["bench", "overhead", "--pipeline", "tiny", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_video_bench_runs_the_wan_structured_pipeline_on_5d_latents(monkeypatch):
    """The video case: the Wan-structured transformer on 17 frames at 128 px, native and guided, equal under cfg."""
    monkeypatch.setitem(bench.PIPELINES, "wan-like", bench.PIPELINES["wan-like"].__class__(
        lambda device: bench.wan_like(32, 1, device=device), family="wan", side=128, frames=17,
        without=("pag term",)))  # the structure at a width that keeps the test fast
    runner = bench.Bench("wan-like", 2)
    native, guided = runner.call(bench.NATIVE), runner.call("cfg")
    assert native.ndim == 5 and native.shape[2] == 5 and native.shape[-1] == 16  # (B, C, 1 + 16/4 frames, 128/8, …)
    assert (native - guided).abs().max() <= 1e-5
    assert "pag term" not in bench.labels(runner)


def test_flops_count_the_work_a_variant_adds():
    """cfg evaluates native CFG's rows: the same work; no CFG is half of it (SD's doubled batch); NAG without CFG adds
    its extra cross-attention to the conditional pass, and less than a second pass; the CPU attention kernel counts."""
    rows = {r["variant"]: r for r in bench.flop_variants(bench.Bench("tiny", 2), ["cfg", "nag (no CFG)"])}
    assert rows["cfg"]["ratio"] == 1.0
    assert rows[bench.NATIVE_COND]["ratio"] == pytest.approx(0.5, abs=0.02)
    assert 1.0 < rows["nag (no CFG)"]["ratio"] < 1.5 and rows["nag (no CFG)"]["baseline"] == bench.NATIVE_COND
    attention = torch.randn(1, 2, 8, 4)
    with bench.FlopCounterMode(display=False) as counter:
        torch.nn.functional.scaled_dot_product_attention(attention, attention, attention)
    assert counter.get_total_flops() == 4 * 2 * 8 * 8 * 4
