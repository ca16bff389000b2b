"""Family facts beyond the FAMILIES-parametrized tests: Sana on its checkpoints' scheduler (DPM-Solver++ on flow
sigmas), HiDream's negated output, Kolors' ChatGLM-sized embeddings."""

from __future__ import annotations

import pytest
from diffusers import DPMSolverMultistepScheduler

import guidance
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales


def sana_on_dpm_solver():
    """The tiny Sana pipeline with the scheduler Sana's checkpoints ship (flow_prediction on flow sigmas, shift 3)."""
    pipe = tiny_pipeline("sana")
    pipe.scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 flow_shift=3.0)
    return pipe


@pytest.mark.parametrize(("spec", "tolerance"), [
    ({"scale": 4.5}, 1e-5),
    ({"scale": 4.5, "rule": {"name": "apg", "eta": 1.0, "norm_threshold": None, "momentum": 0.0}}, 2e-4),
], ids=["cfg", "apg reduced to cfg"])
def test_sana_on_its_checkpoint_scheduler_equals_native(spec: dict, tolerance: float) -> None:
    pipe = sana_on_dpm_solver()
    expected = output_tensor(pipe(**tiny_call_kwargs("sana", batch=2, seed=1, guidance_scale=4.5)))
    got = output_tensor(guidance.run(pipe, spec, **strip_scales(tiny_call_kwargs("sana", batch=2, seed=1))))
    assert (got - expected).abs().max() <= tolerance


def test_sana_cfgpp_on_dpm_solver_flow_is_refused() -> None:
    pipe = sana_on_dpm_solver()
    with pytest.raises(guidance.GuidanceError, match="flow_prediction"):
        guidance.run(pipe, {"rule": "cfgpp", "scale": 0.6}, **strip_scales(tiny_call_kwargs("sana", batch=1)))

