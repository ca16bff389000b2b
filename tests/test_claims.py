"""The papers' claims that reproduce robustly on the digits model (docs/STUDY.md has the full study).

300 samples per setting, 25 deterministic DDIM steps, the same labels and initial noise for every setting. The
margins are far outside the seed-to-seed noise measured in the study.
"""

from __future__ import annotations

import math

import pytest

from guidance.app.evaluate import Setting, evaluate
from guidance.pipelines.digits import load_pipeline


def cfgpp_mean_omega(lam: float, steps: int = 25) -> float:
    """Mean CFG scale that CFG++ DDIM steps equal: ω_t = λ·a'·s/(a'·s − s'·a) (Chung et al.; DDIM's own grid)."""
    scheduler = load_pipeline().scheduler
    scheduler.set_timesteps(steps)
    bar = scheduler.alphas_cumprod.double()
    omegas = []
    for t in scheduler.timesteps.tolist():
        prev = t - 1000 // steps
        a, s = math.sqrt(bar[t]), math.sqrt(1 - bar[t])
        a_prev = math.sqrt(bar[prev] if prev >= 0 else scheduler.final_alpha_cumprod)
        s_prev = math.sqrt(1 - a_prev**2)
        omegas.append(lam * a_prev * s / (a_prev * s - s_prev * a))
    return sum(omegas) / len(omegas)


APG = {"name": "apg", "eta": 0.0, "norm_threshold": 1.0, "momentum": -0.5}
SETTINGS = {
    "cfg 3": {"scale": 3.0},
    "cfg 10": {"scale": 10.0},
    "apg 10": {"scale": 10.0, "rule": APG},
    "ag 3": {"scale": 3.0, "policy": {"name": "adaptive", "threshold": 0.99}},
    "linear 3": {"scale": 3.0, "schedule": "linear"},
    "cosine 3": {"scale": 3.0, "schedule": "cosine"},
    "inverse_linear 3": {"scale": 3.0, "schedule": "inverse_linear"},
    "sine 3": {"scale": 3.0, "schedule": "sine"},
    "cfgpp 0.6": {"scale": 0.6, "rule": "cfgpp"},
    "cfg 1": {"scale": 1.0},
    "cfg 1.5": {"scale": 1.5},
    "cfg 2": {"scale": 2.0},
}
ICG_SCALES = (1.1, 1.2, 1.5, 2.0)


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    settings = [Setting(name, spec) for name, spec in SETTINGS.items()]
    settings.append(Setting("cfg matched to cfgpp 0.6", {"scale": cfgpp_mean_omega(0.6)}))
    settings.append(Setting("twin 1", {"scale": 1.0}, model="digits-no-dropout"))
    settings += [Setting(f"icg twin {w}", {"scale": w, "reference": "icg"}, model="digits-no-dropout")
                 for w in ICG_SCALES]
    results = evaluate(settings, samples=300, progress=False)
    return {row["setting"]: row for row in results}


def test_apg_saturates_far_less_than_cfg_at_high_scale(rows) -> None:
    cfg, apg = rows["cfg 10"], rows["apg 10"]
    assert apg["beyond_range"] < 0.25 * cfg["beyond_range"]
    assert apg["mean_abs"] < cfg["mean_abs"]
    assert apg["accuracy"] >= cfg["accuracy"] - 0.01
    assert apg["fd"] < 0.75 * cfg["fd"]


def test_adaptive_guidance_saves_a_quarter_of_the_rows_at_cfg_quality(rows) -> None:
    cfg, ag = rows["cfg 3"], rows["ag 3"]
    assert ag["rows_per_sample"] <= 0.75 * cfg["rows_per_sample"]
    assert ag["accuracy"] >= cfg["accuracy"] - 0.01
    assert ag["fd"] <= 1.1 * cfg["fd"]


def test_increasing_schedules_beat_constant_and_decreasing_ones_lose(rows) -> None:
    constant = rows["cfg 3"]
    for name in ("linear 3", "cosine 3"):
        assert rows[name]["fd"] < constant["fd"] and rows[name]["recall"] > constant["recall"]
        assert rows[name]["accuracy"] >= 0.99
    for name in ("inverse_linear 3", "sine 3"):
        assert rows[name]["fd"] > constant["fd"] and rows[name]["recall"] < constant["recall"]


def test_cfgpp_beats_cfg_at_matched_strength(rows) -> None:
    """At the CFG scale its steps average to (mean ω_t), CFG++ keeps the accuracy with a lower Fréchet distance."""
    cfgpp, cfg = rows["cfgpp 0.6"], rows["cfg matched to cfgpp 0.6"]
    assert 3.0 < cfg["scale"] < 4.0
    assert cfgpp["accuracy"] >= cfg["accuracy"] - 0.01
    assert cfgpp["fd"] < 0.9 * cfg["fd"]


def cfg_fd_at_confidence(rows: dict[str, dict], confidence: float) -> float:
    """CFG's Fréchet distance at a given classifier confidence, linear between the CFG settings w = 1, 1.5, 2, 3
    (confidence rises with w)."""
    curve = sorted((rows[f"cfg {w}"]["confidence"], rows[f"cfg {w}"]["fd"]) for w in ("1", "1.5", "2", "3"))
    for (c0, fd0), (c1, fd1) in zip(curve, curve[1:], strict=False):
        if c0 <= confidence <= c1:
            return fd0 + (fd1 - fd0) * (confidence - c0) / (c1 - c0)
    raise AssertionError(f"confidence {confidence} is outside CFG's range {curve[0][0]}–{curve[-1][0]}")


def test_icg_on_the_no_dropout_twin_moves_along_cfgs_trade_off(rows) -> None:
    """ICG needs no null condition. On the twin trained without label dropout, over w = 1 … 2, it does what CFG does
    on the dropout model — classifier confidence up, recall down, FD up, monotonically — and for light guidance
    (w = 1.1, 1.2, whose confidence CFG reaches near w = 1.5) its FD is within 10 % of CFG's at the same confidence.
    Not claimed, because it does not hold here: at stronger guidance ICG over-guides faster than CFG (measured at
    300 samples: FD 1.8× CFG's at w = 1.5 and 2.8× at w = 2 at matched confidence; with 10 classes a random class
    is a sharper contrast than the paper's 1000 ImageNet classes). docs/STUDY.md has the numbers."""
    sweep = [rows["twin 1"], *(rows[f"icg twin {w}"] for w in ICG_SCALES)]
    for weaker, stronger in zip(sweep, sweep[1:], strict=False):
        assert stronger["confidence"] > weaker["confidence"] - 1e-4
        assert stronger["recall"] < weaker["recall"]
        assert stronger["fd"] > weaker["fd"]
    assert sweep[-1]["confidence"] > sweep[0]["confidence"] + 1e-3
    for w in (1.1, 1.2):
        icg = rows[f"icg twin {w}"]
        assert icg["accuracy"] >= rows["cfg 1.5"]["accuracy"] - 0.01
        assert icg["fd"] <= 1.1 * cfg_fd_at_confidence(rows, icg["confidence"])
