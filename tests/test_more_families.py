"""Family facts beyond the FAMILIES-parametrized tests: Sana on its checkpoints' scheduler (DPM-Solver++ on flow
sigmas), HiDream's negated output, Kolors' ChatGLM-sized embeddings."""

from __future__ import annotations

import pytest
import torch
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



def test_hidream_refuses_attention_perturbations() -> None:
    pipe = tiny_pipeline("hidream")
    for reference in ({"name": "pag", "layers": ["double_stream_blocks.0"]}, {"name": "seg", "layers": ["blocks.0"]}):
        with pytest.raises(guidance.GuidanceError, match="Use slg or stg"):
            guidance.run(pipe, {"scale": 3.0, "terms": [{"reference": reference, "scale": 1.0}]},
                         **strip_scales(tiny_call_kwargs("hidream", batch=1)))


def test_hidream_icg_redraws_every_condition_per_sample() -> None:
    """ICG's gaussian conditions on HiDream: the T5, pooled and layer-first Llama-3 states of the reference rows are
    all replaced (the Llama-3 states cut along their batch dimension, 1), the conditional rows kept. Seen at the
    inputs of the transformer's caption projections (Llama-3 layer 0, T5) and pooled embedder."""
    pipe = tiny_pipeline("hidream")
    transformer = pipe.transformer
    modules = {"llama": transformer.caption_projection[0], "t5": transformer.caption_projection[-1],
               "pooled": transformer.p_embedder}
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = [module.register_forward_pre_hook(lambda m, a, name=name: seen[name].append(a[0]))
               for name, module in modules.items()]
    kwargs = strip_scales(tiny_call_kwargs("hidream", batch=2, seed=1, num_inference_steps=2))
    guidance.run(pipe, {"scale": 3.0, "reference": "icg"}, **kwargs)
    for handle in handles:
        handle.remove()
    given = tiny_call_kwargs("hidream", batch=2, seed=1, num_inference_steps=2)
    conditions = {"llama": given["prompt_embeds_llama3"][0], "t5": given["prompt_embeds_t5"],
                  "pooled": given["pooled_prompt_embeds"]}
    for name, inputs in seen.items():
        assert len(inputs) == 2, f"{name}: one call per step"
        for rows in inputs:
            assert rows.shape[0] == 4  # conditional rows, then reference rows
            assert torch.equal(rows[:2], conditions[name]), f"{name}: the conditional rows changed"
            assert not torch.isclose(rows[2:], conditions[name]).any(), f"{name}: a reference row kept its condition"
