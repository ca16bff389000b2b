"""The comparison pages of `guidance sweep` and `guidance evaluate`: what their data files hold (checked against
hand counts and hand formulas), that the page is a self-contained view of that file, and, in a real headless
Chromium, that it loads without errors, shows every image, compares two cells and is not blank."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import guidance
from guidance.app.cli import main
from guidance.app.page import differing, write_page
from guidance.pipelines.digits import load_pipeline
from guidance.telemetry import effective_scales, mean_effective_scale

from browser import load, pixel_spread

STEPS = 3
SWEEP = ["sweep", "--set", "class_labels=[7]", "--set", f"sampler.steps={STEPS}", "--grid", "guidance.scale=1,3",
         "--grid", "guidance.rule=cfg,apg", "--seeds", "0-1", "--no-progress"]


def embedded(page: Path) -> dict:
    """The data the page shows: the JSON inside its <script id="data"> element."""
    text = re.search(r'<script type="application/json" id="data">(.*?)</script>', page.read_text(), re.S).group(1)
    return json.loads(text)


def record(branches: tuple[str, ...], w: float, sigma: float = 1.0, reference_rows: int = 2, samples: int = 2) -> dict:
    return {"branches": list(branches), "w": w, "sigma": sigma, "reference_rows": reference_rows, "samples": samples}


def test_effective_scales_by_hand() -> None:
    steps = [record(("cond", "reference"), 3.0), record(("cond",), 1.0, reference_rows=0),
             record(("cond", "reference"), 3.0, reference_rows=1, samples=4), record(("cond", "estimate"), 3.0, 0),
             record((), 3.0, reference_rows=0)]
    assert effective_scales(steps) == [3.0, 1.0, 1.0 + 2.0 / 4, 3.0, None]
    assert mean_effective_scale(steps) == pytest.approx((3 + 1 + 1.5 + 3) / 4)
    cfgpp = [record(("cond", "reference"), 0.5, sigma) for sigma in (4.0, 2.0, 1.0)]
    assert effective_scales(cfgpp, {"name": "cfgpp"}) == [0.5 * 4 / (4 - 2), 0.5 * 2 / (2 - 1), None]
    flow = [record(("cond", "reference"), 0.5, sigma) for sigma in (float("inf"), 2.0, 1.0)]  # σ_0 = ∞: the limit λ
    assert effective_scales(flow, {"name": "cfgpp"}) == [0.5, 0.5 * 2 / (2 - 1), None]


def test_cfgpp_effective_scale_is_the_cfg_scale_of_the_same_step() -> None:
    """On the digits model (DDIM, v-prediction): the first CFG++ step at λ = 0.6 gives the latents of a CFG step at
    the scale the telemetry reports, which is ω = λ·a'·s/(a'·s − s'·a) from the scheduler's ᾱ by hand."""
    pipe = load_pipeline()
    noise = torch.randn((2, *pipe.sample_shape), generator=torch.Generator().manual_seed(0))
    first: dict[str, torch.Tensor] = {}

    def sample(name: str, spec: dict, stats: dict | None = None) -> None:
        def keep(_pipe, _index, _t, tensors):
            first.setdefault(name, tensors["latents"].clone())
            return tensors

        guidance.run(pipe, spec, stats=stats, class_labels=[1, 2], latents=noise.clone(), num_inference_steps=3,
                     output_type="latent", callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"])

    stats: dict = {}
    sample("cfgpp", {"rule": "cfgpp", "scale": 0.6}, stats)
    scales = effective_scales(stats["steps"], {"name": "cfgpp"})
    scheduler = pipe.scheduler
    scheduler.set_timesteps(3)
    bar = scheduler.alphas_cumprod.double()
    t, t_next = (int(t) for t in scheduler.timesteps[:2])
    a, s, a_next, s_next = (math.sqrt(v) for v in (bar[t], 1 - bar[t], bar[t_next], 1 - bar[t_next]))
    assert scales[0] == pytest.approx(0.6 * a_next * s / (a_next * s - s_next * a), rel=1e-6)
    assert scales[2] is None  # the last step's next state is not in the telemetry
    sample("cfg", {"rule": "cfg", "scale": scales[0]})
    assert torch.allclose(first["cfg"], first["cfgpp"], atol=1e-5)


def test_differing_keeps_only_what_differs() -> None:
    base = {"guidance": {"scale": 3.0, "rule": {"name": "cfg"}}, "sampler": {"steps": 4}}
    cells = [{"guidance": {"scale": 3.0, "rule": {"name": "cfg"}}, "sampler": {"steps": 4}},
             {"guidance": {"scale": 1.0, "rule": {"name": "apg", "eta": 0.0}}, "sampler": {"steps": 4}}]
    assert differing(cells, base) == [{}, {"guidance.scale": 1.0, "guidance.rule.name": "apg",
                                           "guidance.rule.eta": 0.0}]
    assert differing(cells, None) == [{"guidance.scale": 3.0, "guidance.rule.name": "cfg"},
                                      {"guidance.scale": 1.0, "guidance.rule.name": "apg", "guidance.rule.eta": 0.0}]


def test_the_page_embeds_any_text_of_its_data_file_safely(tmp_path) -> None:
    data = {"kind": "sweep", "note": "</script><script>alert(1)</script> <!-- x"}
    (tmp_path / "sweep.json").write_text(json.dumps(data))
    page = write_page(tmp_path, "sweep.json")
    assert page.read_text().count("</script>") == 2  # the data element's and the script's own
    assert embedded(page) == data
    (tmp_path / "sweep.json").write_text('{"kind": "sweep", "cells": [')  # a cut file is never shown
    with pytest.raises(ValueError):
        write_page(tmp_path, "sweep.json")
    assert embedded(page) == data


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page") / "sweep"
    assert main([*SWEEP, "--out", str(out)]) == 0
    return out


def test_the_sweep_data_file_holds_what_the_page_shows(swept) -> None:
    data = json.loads((swept / "sweep.json").read_text())
    cells = {cell["cell"]: cell for cell in data["cells"]}
    # the default run config has scale 3 and cfg: only the grid values that differ from it are listed
    assert cells["guidance.scale=3, guidance.rule=cfg"]["settings"] == {}
    assert cells["guidance.scale=1, guidance.rule=cfg"]["settings"] == {"guidance.scale": 1.0}
    assert cells["guidance.scale=3, guidance.rule=apg"]["settings"]["guidance.rule.name"] == "apg"
    for label, cell in cells.items():
        w = 1.0 if label.startswith("guidance.scale=1") else 3.0
        rows = STEPS * (1 if w == 1.0 else 2)  # the conditional row per step, and the unconditional one at w > 1
        assert [m["seed"] for m in cell["media"]] == [0, 1] and all(m["item"] == 7 for m in cell["media"])
        assert all(m["denoiser_rows"] == rows and m["seconds"] > 0 and m["mean_w"] == w for m in cell["media"])
        assert all((swept / m["src"]).is_file() and not m["video"] for m in cell["media"])
        telemetry = cell["telemetry"]
        assert telemetry["w"] == [w] * STEPS and telemetry["branches"] == [rows / STEPS] * STEPS
        assert cell["mean_w"] == w and len(telemetry["cosine"]) == STEPS
        assert (telemetry["cosine"][0] is None) == (w == 1.0)
    assert embedded(swept / "index.html") == data


def test_the_page_is_self_contained(swept) -> None:
    html = (swept / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert "fetch(" not in html and "XMLHttpRequest" not in html


def test_a_restarted_sweep_rewrites_the_page_from_disk(tmp_path) -> None:
    out = tmp_path / "sweep"
    assert main([*SWEEP, "--out", str(out)]) == 0
    records = sorted(out.rglob("image-000.json"))
    stamps = {p: p.stat().st_mtime_ns for p in records}
    before = json.loads((out / "sweep.json").read_text())
    (out / "index.html").unlink()
    redo = out / "guidance.scale-3-guidance.rule-apg" / "seed-1"
    (redo / "image-000.json").unlink()  # killed between the images and the record: the call is made again
    assert main([*SWEEP, "--out", str(out)]) == 0
    assert {p for p in records if p.stat().st_mtime_ns != stamps.get(p)} == {redo / "image-000.json"}
    after = json.loads((out / "sweep.json").read_text())
    kept = [m for cell in before["cells"] for m in cell["media"] if not m["src"].startswith(str(redo.relative_to(out)))]
    assert all(m in [n for cell in after["cells"] for n in cell["media"]] for m in kept)
    assert embedded(out / "index.html") == after


def test_the_sweep_page_in_a_browser(swept, tab, tmp_path) -> None:
    load(tab, swept / "index.html")
    data = json.loads((swept / "sweep.json").read_text())
    sources = [m["src"] for cell in data["cells"] for m in cell["media"]]
    grid = tab.evaluate("[...document.querySelectorAll('#grid figure img')].map(i => i.getAttribute('src'))")
    assert grid == sources  # cells × seeds, in the data file's order
    assert tab.evaluate("document.querySelectorAll('#grid svg.plot').length") == 4 * len(data["cells"])
    assert tab.evaluate("document.querySelectorAll('#matched .thumb').length") == len(data["cells"])
    assert tab.evaluate("document.getElementById('compare').hidden") is True
    tab.evaluate("const f = document.querySelectorAll('#grid figure'); f[0].click(); f[5].click(); true")
    shown = tab.evaluate("""(() => {
        const box = document.getElementById('compare');
        return {hidden: box.hidden, a: box.querySelector('[data-compare=a] img').getAttribute('src'),
                b: box.querySelector('[data-compare=b] img').getAttribute('src'),
                loaded: [...box.querySelectorAll('img')].map(i => i.complete && i.naturalWidth > 0)}; })()""")
    assert shown["hidden"] is False and shown["a"] == sources[0] and shown["b"] == sources[5]
    assert shown["loaded"] == [True] * 4  # A, B, and both layers of the slider
    clip = tab.evaluate("""(() => { const r = document.querySelector('#compare input[type=range]'); r.value = 20;
        r.dispatchEvent(new Event('input'));
        return document.querySelector('#overlay img + img').style.clipPath; })()""")
    assert clip == "inset(0px 0px 0px 20%)"
    flipped = tab.evaluate("""(() => { [...document.querySelectorAll('.modes button')].find(b => b.textContent ===
        'flip').click(); const top = () => getComputedStyle(document.querySelector('#overlay img + img')).visibility;
        const button = [...document.querySelectorAll('#compare button')].find(b => b.textContent === 'flip A/B');
        const before = top(); button.click(); return [before, top()]; })()""")
    assert flipped == ["visible", "hidden"]
    shot = tab.screenshot()
    assert pixel_spread(shot) > 20, "the screenshot is (nearly) one colour"
    assert tab.errors == []


def test_the_evaluation_page_in_a_browser(tab, tmp_path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("samples: 20\nsteps: 4\nsettings:\n  - {name: cfg, guidance: {rule: cfg}, scales: [1, 3]}\n"
                      "  - {name: ag, guidance: {policy: {name: adaptive, threshold: 0.9}}, scales: [3]}\n")
    out = tmp_path / "out"
    assert main(["evaluate", "-c", str(config), "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "evaluation.json").read_text())
    rows = {row["setting"]: row for row in data["metrics"]["rows"]}
    assert rows["cfg w=1"]["mean_w"] == 1 and rows["cfg w=3"]["mean_w"] == 3
    # AG: w − 1 on the fraction of (sample, step) pairs that evaluated the reference, read from the row count
    reference_share = (rows["ag w=3"]["rows_per_sample"] - 4) / 4
    assert 0 < reference_share < 1 and rows["ag w=3"]["mean_w"] == pytest.approx(1 + 2 * reference_share, rel=1e-4)
    assert [cell["settings"] for cell in data["cells"]][:2] == [
        {"guidance.scale": 1.0, "guidance.policy.name": "always"},
        {"guidance.scale": 3.0, "guidance.policy.name": "always"}]
    assert embedded(out / "index.html") == data
    load(tab, out / "index.html")
    assert tab.evaluate("document.getElementById('metrics-section').hidden") is False
    assert tab.evaluate("document.querySelectorAll('#metrics tr').length") == 1 + 3
    plotted = len(data["metrics"]["plotted"])
    assert tab.evaluate("document.querySelectorAll('#metric-plots svg').length") == plotted
    assert tab.evaluate("document.querySelectorAll('#matched-plots svg').length") == plotted
    assert tab.evaluate("document.querySelectorAll('#metric-plots circle').length") == 3 * plotted
    assert pixel_spread(tab.screenshot()) > 20 and tab.errors == []
