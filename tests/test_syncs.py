"""The hot path reads nothing from the device per step beyond what native diffusers CFG reads.

Counted with `guidance.app.bench.HostReads` (every tensor value the host reads: `.item()`, `float()`, `bool()`,
`.tolist()`, indexing a list with a tensor, …, except the scheduler's host-side σ/ᾱ tables), as the slope between
runs of 4 and 8 steps, against native CFG on the same pipeline.
"""

import pytest

from guidance.app.bench import NATIVE, VARIANTS, Bench, sync_sites

STEPS = 4


@pytest.fixture(scope="module")
def bench():
    return Bench("tiny", STEPS)


def per_step_and_call(bench, label):
    short, long = len(sync_sites(bench, label, STEPS)), len(sync_sites(bench, label, 2 * STEPS))
    per_step = (long - short) / STEPS
    return per_step, short - STEPS * per_step


@pytest.fixture(scope="module")
def native(bench):
    per_step, per_call = per_step_and_call(bench, NATIVE)
    assert per_step > 0  # the instrument sees native diffusers' own reads (DDIM indexes ᾱ by the timestep)
    return per_step, per_call


@pytest.mark.parametrize("label", [v for v in VARIANTS if v != "adaptive"])
def test_no_extra_reads_per_step(bench, native, label):
    per_step, per_call = per_step_and_call(bench, label)
    assert per_step == native[0]
    assert per_call - native[1] <= 2  # the step table's timesteps and locating the first step, once per call


def test_adaptive_guidance_reads_its_decision_once_per_guided_step(bench, native, monkeypatch):
    monkeypatch.setitem(VARIANTS, "never switching", {"policy": {"name": "adaptive", "threshold": 1.0}})
    per_step, per_call = per_step_and_call(bench, "never switching")
    assert per_step == native[0] + 1
    assert per_call - native[1] <= 2
