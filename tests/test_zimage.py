"""Z-Image beyond the FAMILIES-parametrized tests: its norm cap (cfg_normalization) reproduced, cfg_truncation and
the Omni layout refused, icg on caption features of different lengths, pag on its own processor's attention."""

from __future__ import annotations

import pytest
import torch

import guidance
from guidance.pipelines.call import DenoiserCall
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline
from guidance.pipelines.testing.tiny_zimage import NEGATIVE_LEN

from conftest import output_tensor, strip_scales

W = 4.5


def native(pipe, **extra) -> torch.Tensor:
    return output_tensor(pipe(**tiny_call_kwargs("zimage", batch=2, seed=1, guidance_scale=W), **extra))


@pytest.mark.parametrize("normalization", [1.0, 0.5])
def test_cfg_with_its_norm_cap_equals_native(normalization: float) -> None:
    """cfg_normalization c caps ‖pos + g·(pos − neg)‖ at c·‖pos‖ per sample (c < 1: below the conditional norm)."""
    pipe = tiny_pipeline("zimage")
    expected = native(pipe, cfg_normalization=normalization)
    assert (expected - native(pipe)).abs().max() > 1e-3, "the cap changed nothing: the check cannot see it"
    kwargs = strip_scales(tiny_call_kwargs("zimage", batch=2, seed=1))
    got = output_tensor(guidance.run(pipe, {"scale": W}, cfg_normalization=normalization, **kwargs))
    assert (got - expected).abs().max() <= 1e-5


def test_cfg_with_attach_equals_native() -> None:
    """With attach the caller's guidance_scale (g = w − 1 > 0) only switches the doubled batch on."""
    pipe = tiny_pipeline("zimage")
    expected = native(pipe)
    with guidance.attach(pipe, {"scale": W}) as session:
        got = output_tensor(pipe(**tiny_call_kwargs("zimage", batch=2, seed=1, guidance_scale=2.0),
                                 callback_on_step_end=session.callback))
    assert (got - expected).abs().max() <= 1e-5


def test_cfg_truncation_is_refused() -> None:
    pipe = tiny_pipeline("zimage")
    kwargs = strip_scales(tiny_call_kwargs("zimage", batch=2, seed=1))
    with pytest.raises(guidance.GuidanceError, match="cfg_truncation < 1 drops the negative rows.*schedule"):
        guidance.run(pipe, {"scale": W}, cfg_truncation=0.5, **kwargs)


def test_nested_image_lists_are_refused() -> None:
    """Z-Image Omni's layout (a list of images per sample) cannot be cut into rows."""
    adapter = guidance.pipelines.adapters.adapter_for(tiny_pipeline("zimage"))
    nested = [[torch.zeros(4, 1, 8, 8)], [torch.zeros(4, 1, 8, 8)]]
    call = adapter.per_sample(DenoiserCall({"x": nested, "t": torch.zeros(2), "cap_feats": [[], []]}, "x"))
    with pytest.raises(guidance.GuidanceError, match="nested lists of images per sample"):
        adapter.check_call(call)


def test_icg_keeps_each_rows_caption_length() -> None:
    """icg's reference rows are the conditional rows with new caption features of the same per-row lengths (the
    pipeline's own call would hold the shorter negatives there)."""
    pipe = tiny_pipeline("zimage")
    kwargs = strip_scales(tiny_call_kwargs("zimage", batch=2, seed=1))
    lengths: list[list[int]] = []
    original = pipe.transformer.patchify_and_embed

    def patchify_and_embed(x, cap_feats, *args, **kw):
        lengths.append([len(c) for c in cap_feats])
        return original(x, cap_feats, *args, **kw)

    pipe.transformer.patchify_and_embed = patchify_and_embed
    try:
        out = output_tensor(guidance.run(pipe, {"scale": W, "reference": "icg"}, **kwargs))
    finally:
        del pipe.transformer.patchify_and_embed
    prompts = [len(p) for p in kwargs["prompt_embeds"]]
    assert prompts != [NEGATIVE_LEN] * 2
    assert lengths == [prompts * 2] * 4
    assert torch.isfinite(out).all() and (out - native(pipe)).abs().max() > 1e-3


def test_pag_on_its_attention_with_layers() -> None:
    """pag has no diffusers default for Z-Image; given layers, the perturbed rows join the guided call."""
    pipe = tiny_pipeline("zimage")
    kwargs = strip_scales(tiny_call_kwargs("zimage", batch=2, seed=1))
    with pytest.raises(guidance.GuidanceError, match="pag has no default layers"):
        guidance.run(pipe, {"scale": W, "terms": [{"reference": "pag"}]}, **kwargs)
    stats: dict = {}
    spec = {"scale": W, "terms": [{"reference": {"name": "pag", "layers": ["layers.1"]}, "scale": 3.0}]}
    out = output_tensor(guidance.run(pipe, spec, stats=stats, **kwargs))
    assert stats["denoiser_rows"] == 6 * 4
    assert torch.isfinite(out).all() and (out - native(pipe)).abs().max() > 1e-4
