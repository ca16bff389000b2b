"""Skipped work is real: the rows the session reports are the rows the denoiser evaluated (docs/CONVENTIONS.md §4,
§5, §12, §16).

Every count is checked three ways: the session's `denoiser_rows` (total and per step), a forward pre-hook on the
denoiser's first layer (`row_counter`, independent of the library), and the count the spec implies by hand.
Steps are told apart in the hook's call list by a wrapper put on `scheduler.step` before the run.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import guidance
from guidance.pipelines.testing.tiny import FAMILIES, tiny_call_kwargs, tiny_pipeline

from conftest import strip_scales

B = 2
N = 5
# families whose pipelines run the prompt and the negative prompt as two denoiser calls (read from their code)
SEPARATE_CALLS = ("flux", "wan", "wan22", "wan_i2v", "wan22_5b", "wan22_5b_i2v", "qwenimage", "hunyuanvideo",
                  "flux_kontext", "flux2_klein", "chroma", "lumina2")
RECORD_KEYS = {"t", "sigma", "w", "cosine", "delta_norm", "branches", "reference_rows", "denoiser_rows"}


class StepMarks:
    """Marks the end of every step in a RowCounter's call list (a wrapper someone put on scheduler.step)."""

    def __init__(self, scheduler, counter) -> None:
        self.scheduler, self.counter, self.marks = scheduler, counter, []
        original = scheduler.step

        @functools.wraps(original)
        def step(*args, **kwargs):
            self.marks.append(len(counter.calls))
            return original(*args, **kwargs)

        scheduler.step = step

    def per_step(self) -> list[list[int]]:
        """The hook's per-call row counts, grouped by step; calls after the last step form a last group."""
        bounds = [0, *self.marks, len(self.counter.calls)]
        groups = [self.counter.calls[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        assert groups[-1] == [], f"denoiser calls after the last scheduler step: {groups[-1]}"
        return groups[:-1]

    def close(self) -> None:
        del self.scheduler.step


def kwargs_for(family: str) -> dict:
    return strip_scales(tiny_call_kwargs(family, batch=B, num_inference_steps=N))


def guided_run(family: str, spec: dict, row_counter):
    """Run `spec` on a fresh tiny pipeline; returns (pipe, stats, per-step hook call lists)."""
    pipe = tiny_pipeline(family)
    counter = row_counter(pipe)
    marks = StepMarks(pipe.scheduler, counter)
    stats: dict = {}
    guidance.run(pipe, spec, stats=stats, **kwargs_for(family))
    groups = marks.per_step()
    marks.close()
    assert stats["denoiser_rows"] == counter.rows, "session total rows != rows the first layer saw"
    assert stats["denoiser_rows"] == sum(counter.calls)
    return pipe, stats, groups


def check_records(stats: dict, groups: list[list[int]], pipe) -> None:
    """One record per step, all keys present, per-step rows equal to the hook's, t from the scheduler."""
    steps = stats["steps"]
    assert len(groups) == N, f"the scheduler stepped {len(groups)} times, expected {N}"
    assert len(steps) == N, f"{len(steps)} telemetry records for {N} steps"
    for k, record in enumerate(steps):
        missing = RECORD_KEYS - set(record)
        assert not missing, f"step {k} record lacks {missing}"
        assert record["step"] == k
        assert record["denoiser_rows"] == sum(groups[k]), (
            f"step {k}: telemetry says {record['denoiser_rows']} rows, hook saw calls {groups[k]}")
        assert record["t"] == pytest.approx(float(pipe.scheduler.timesteps[k])), f"step {k}: t"
    assert sum(r["denoiser_rows"] for r in steps) == stats["denoiser_rows"]


def expected_calls(family: str, cond: bool, ref: int) -> list[int]:
    """Hook call list of one step: `cond` = conditional rows run, `ref` = reference rows (of B)."""
    if family in SEPARATE_CALLS:  # separate calls: conditional, then the negative prompt's
        return ([B] if cond else []) + ([ref] if ref else [])
    rows = (B if cond else 0) + ref
    return [rows] if rows else []


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_one_runs_conditional_rows_only(family, row_counter):
    pipe, stats, groups = guided_run(family, {"scale": 1.0}, row_counter)
    check_records(stats, groups, pipe)
    assert groups == [[B]] * N
    assert stats["denoiser_rows"] == B * N
    for record in stats["steps"]:
        assert record["w"] == 1.0
        assert record["branches"] == ["cond"]
        assert record["reference_rows"] == 0
        assert record["cosine"] is None and record["delta_norm"] is None


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_five_runs_both_branches(family, row_counter):
    pipe, stats, groups = guided_run(family, {"scale": 5.0}, row_counter)
    check_records(stats, groups, pipe)
    assert groups == [expected_calls(family, True, B)] * N
    assert stats["denoiser_rows"] == 2 * B * N
    for record in stats["steps"]:
        assert record["w"] == 5.0
        assert record["branches"] == ["cond", "reference"]
        assert record["reference_rows"] == B
        assert len(record["cosine"]) == B and all(math.isfinite(c) for c in record["cosine"])
        assert len(record["delta_norm"]) == B and all(d > 0 for d in record["delta_norm"])


def noise_to_signal(scheduler) -> list[float]:
    """σ_i = s/a of each step of the scheduler's current run, by hand (docs/CONVENTIONS.md §3)."""
    n = len(scheduler.timesteps)
    name = type(scheduler).__name__
    if "FlowMatch" in name or scheduler.config.get("use_flow_sigmas"):
        sigma = scheduler.sigmas[:n].double()
        return (sigma / (1.0 - sigma)).tolist()  # σ = 1 gives inf
    if getattr(scheduler, "sigmas", None) is not None and name != "DDIMScheduler":
        return scheduler.sigmas[:n].double().tolist()
    alpha = scheduler.alphas_cumprod.double()[scheduler.timesteps.long()]
    return ((1.0 - alpha) / alpha).sqrt().tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_interval_schedule_skips_reference_outside(family, row_counter):
    probe = tiny_pipeline(family)
    probe(**tiny_call_kwargs(family, batch=B, num_inference_steps=N))  # sets up the scheduler's run
    sigma = noise_to_signal(probe.scheduler)
    assert sigma == sorted(sigma, reverse=True)
    # guide the middle steps only: exclude the first (noisiest) and the last step
    hi = (sigma[1] + sigma[0]) / 2 if math.isfinite(sigma[0]) else 2 * sigma[1]
    lo = (sigma[-1] + sigma[-2]) / 2
    inside = [lo < s <= hi for s in sigma]
    assert inside == [False, True, True, True, False]
    spec = {"scale": 5.0, "schedule": {"name": "interval", "sigma_lo": lo, "sigma_hi": hi}}
    pipe, stats, groups = guided_run(family, spec, row_counter)
    check_records(stats, groups, pipe)
    assert groups == [expected_calls(family, True, B if i else 0) for i in inside]
    assert stats["denoiser_rows"] == sum(2 * B if i else B for i in inside)
    for k, record in enumerate(stats["steps"]):
        if math.isfinite(sigma[k]):
            assert record["sigma"] == pytest.approx(sigma[k], rel=1e-4), f"step {k}: telemetry σ"
        else:
            assert record["sigma"] == math.inf
        assert record["w"] == (5.0 if inside[k] else 1.0)
        assert record["reference_rows"] == (B if inside[k] else 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_adaptive_switches_after_first_step(family, row_counter):
    spec = {"scale": 5.0, "policy": {"name": "adaptive", "threshold": -0.5}}
    pipe, stats, groups = guided_run(family, spec, row_counter)
    check_records(stats, groups, pipe)
    first = stats["steps"][0]
    assert all(c > -0.5 for c in first["cosine"]), "the test assumes cos > -0.5 at step 0"
    assert groups == [expected_calls(family, True, B)] + [[B]] * (N - 1)
    assert stats["denoiser_rows"] == 2 * B + B * (N - 1)
    assert first["reference_rows"] == B and first["branches"] == ["cond", "reference"]
    assert first["w"] == 5.0, "the switch step itself is still guided"
    for record in stats["steps"][1:]:
        assert record["reference_rows"] == 0
        assert record["branches"] == ["cond"]


def separating_threshold(cosines: list[list[float]]) -> tuple[float, list[int | None]]:
    """A threshold between two observed cosines at which the samples switch at different steps (largest gap)."""
    values = sorted({c for row in cosines for c in row})
    best = None
    for lo, hi in zip(values[:-1], values[1:], strict=True):
        threshold = (lo + hi) / 2
        switch = []
        for b in range(B):
            above = [k for k, row in enumerate(cosines) if row[b] > threshold]
            switch.append(above[0] if above else None)
        if len(set(switch)) == B and (best is None or hi - lo > best[0]):
            best = (hi - lo, threshold, switch)
    assert best is not None and best[0] > 1e-6, f"no threshold separates the samples: {cosines}"
    return best[1], best[2]


@pytest.mark.parametrize("family", FAMILIES)
def test_adaptive_per_sample_rows(family, row_counter):
    """docs/CONVENTIONS.md §16: after one sample switched, each step runs all conditional rows plus the reference
    rows of the samples that have not switched. AG equals CFG up to a sample's switch step, so a CFG run's per-sample
    cosines give every sample's switch step in advance."""
    _, cfg_stats, _ = guided_run(family, {"scale": 5.0}, row_counter)
    threshold, switch = separating_threshold([r["cosine"] for r in cfg_stats["steps"]])
    spec = {"scale": 5.0, "policy": {"name": "adaptive", "threshold": threshold}}
    pipe, stats, groups = guided_run(family, spec, row_counter)
    check_records(stats, groups, pipe)
    live = [sum(1 for s in switch if s is None or s >= k) for k in range(N)]
    assert groups == [expected_calls(family, True, n) for n in live], f"switch steps {switch}"
    assert [r["reference_rows"] for r in stats["steps"]] == live
    assert stats["denoiser_rows"] == B * N + sum(live)


@pytest.mark.parametrize("family", FAMILIES)
def test_cfg_zero_star_zero_init_evaluates_nothing(family, row_counter):
    spec = {"scale": 5.0, "rule": {"name": "cfg_zero_star", "zero_init_steps": 1}}
    pipe, stats, groups = guided_run(family, spec, row_counter)
    check_records(stats, groups, pipe)
    assert groups == [[]] + [expected_calls(family, True, B)] * (N - 1)
    assert stats["denoiser_rows"] == 2 * B * (N - 1)
    assert stats["steps"][0]["denoiser_rows"] == 0
    assert stats["steps"][0]["reference_rows"] == 0
    for record in stats["steps"][1:]:
        assert record["reference_rows"] == B


def test_hook_counts_rows_not_calls(row_counter):
    """Sanity of the independent counter: a plain native call counts 2B rows per step."""
    pipe = tiny_pipeline("sd")
    counter = row_counter(pipe)
    with torch.no_grad():
        pipe(**tiny_call_kwargs("sd", batch=B, num_inference_steps=N))
    assert counter.calls == [2 * B] * N
