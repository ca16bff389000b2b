"""ICG and TSG: the reference rows see another condition / another time embedding, and nothing else."""

from __future__ import annotations

import pytest
import torch

import guidance
from guidance.errors import GuidanceError
from guidance.pipelines.adapters.base import RANDOM_PROMPTS
from guidance.pipelines.testing.tiny import NULL_CLASS, tiny_call_kwargs, tiny_pipeline
from guidance.spec import load

from conftest import strip_scales


class Capture:
    """Records (inputs, kwargs, output) of a submodule at every call."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seen: list[tuple] = []
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.seen.append((args, kwargs, output))

    def close(self) -> None:
        self.handle.remove()


def cross_attention(unet) -> torch.nn.Module:
    return next(m for name, m in unet.named_modules() if name.endswith("attn2"))


def test_icg_class_on_dit_draws_random_non_null_classes() -> None:
    pipe = tiny_pipeline("dit")
    emb = pipe.transformer.transformer_blocks[1].norm1.emb  # block 0's embedder also feeds the final layer
    labels, times, inputs = Capture(emb.class_embedder), Capture(emb.time_proj), Capture(pipe.transformer.pos_embed)
    kwargs = strip_scales(tiny_call_kwargs("dit", batch=2, seed=3, num_inference_steps=5))
    guidance.run(pipe, {"scale": 4.0, "reference": "icg"}, **kwargs)
    drawn = []
    for (args, _, _), (t_args, _, _), (x_args, _, _) in zip(labels.seen, times.seen, inputs.seen, strict=True):
        row_labels = args[0]
        assert row_labels[:2].tolist() == kwargs["class_labels"]  # conditional rows: the requested classes
        reference = row_labels[2:]
        assert ((reference >= 0) & (reference < NULL_CLASS)).all()  # never the null class
        drawn.append(reference.tolist())
        assert torch.equal(t_args[0][:2], t_args[0][2:])  # same t
        assert torch.equal(x_args[0][:2], x_args[0][2:])  # same x_t
    assert len({tuple(d) for d in drawn}) > 1  # drawn afresh every step
    for capture in (labels, times, inputs):
        capture.close()


def test_icg_gaussian_on_sd_matches_condition_statistics() -> None:
    pipe = tiny_pipeline("sd")
    attention, conv_in = Capture(cross_attention(pipe.unet)), Capture(pipe.unet.conv_in)
    guidance.run(pipe, {"scale": 4.0, "reference": {"name": "icg", "source": "gaussian"}},
                 **strip_scales(tiny_call_kwargs("sd", batch=2, seed=0)))
    for (_, kwargs, _), (x_args, _, _) in zip(attention.seen, conv_in.seen, strict=True):
        states = kwargs["encoder_hidden_states"]
        cond, reference = states[:2].double(), states[2:].double()
        for b in range(2):
            assert abs(reference[b].mean() - cond[b].mean()) < 0.15 * cond[b].std()
            assert abs(reference[b].std() / cond[b].std() - 1) < 0.15
        assert not torch.allclose(cond, reference)
        assert torch.equal(x_args[0][:2], x_args[0][2:])
    attention.close()
    conv_in.close()


def test_icg_prompt_on_sd_uses_encoded_random_prompts() -> None:
    pipe = tiny_pipeline("sd")
    bank, _ = pipe.encode_prompt(list(RANDOM_PROMPTS), "cpu", 1, False)
    attention = Capture(cross_attention(pipe.unet))
    guidance.run(pipe, {"scale": 4.0, "reference": {"name": "icg", "source": "prompt"}},
                 **strip_scales(tiny_call_kwargs("sd", batch=2, seed=0)))
    for _, kwargs, _ in attention.seen:
        for row in kwargs["encoder_hidden_states"][2:]:
            assert any(torch.allclose(row, candidate, atol=1e-6) for candidate in bank)
    attention.close()


def test_icg_prompt_takes_a_prompt_list_of_its_own() -> None:
    """`prompts`: every reference row is one of these prompts as the pipeline encodes them, none of the built-in ones;
    the list needs source: prompt."""
    pipe = tiny_pipeline("sd")
    prompts = ["a small red circle at the top on a blue background", "two green squares on a white background"]
    bank, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
    default, _ = pipe.encode_prompt(list(RANDOM_PROMPTS), "cpu", 1, False)
    attention = Capture(cross_attention(pipe.unet))
    guidance.run(pipe, {"scale": 4.0, "reference": {"name": "icg", "source": "prompt", "prompts": prompts}},
                 **strip_scales(tiny_call_kwargs("sd", batch=2, seed=0)))
    rows = [row for _, kwargs, _ in attention.seen for row in kwargs["encoder_hidden_states"][2:]]
    assert all(any(torch.allclose(row, candidate, atol=1e-6) for candidate in bank) for row in rows)
    assert not any(torch.allclose(row, candidate, atol=1e-6) for row in rows for candidate in default)
    attention.close()
    with pytest.raises(GuidanceError, match="source: prompt"):
        load({"reference": {"name": "icg", "source": "gaussian", "prompts": prompts}})


def test_icg_on_flux_needs_no_negative_call() -> None:
    """ICG's reference rows are built from the conditional call and run in a call of their own (B rows, as the
    pipeline's calls): no negative call."""
    pipe = tiny_pipeline("flux")
    pooled = Capture(pipe.transformer.time_text_embed.text_embedder)
    kwargs = strip_scales(tiny_call_kwargs("flux", batch=2, seed=0))
    stats: dict = {}
    guidance.run(pipe, {"scale": 4.0, "reference": "icg"}, stats=stats, **kwargs)
    assert stats["denoiser_calls"] == 8 and stats["denoiser_rows"] == 16
    for (cond, _, _), (reference, _, _) in zip(pooled.seen[::2], pooled.seen[1::2], strict=True):
        assert torch.allclose(cond[0], kwargs["pooled_prompt_embeds"])
        assert not torch.allclose(reference[0], kwargs["pooled_prompt_embeds"])
        assert not torch.allclose(reference[0], kwargs["negative_pooled_prompt_embeds"])
    pooled.close()


def _time_embedding_rows(pipe, spec, family="sd"):
    """Time-embedding outputs of every call, as the rest of the network sees them (hooked after attach)."""
    kwargs = tiny_call_kwargs(family, batch=2, seed=0, guidance_scale=2.0)
    with guidance.attach(pipe, spec):
        modules = guidance.pipelines.adapter_for(pipe).time_embedders()
        captures = [Capture(m) for m in modules]
        pipe(**kwargs)
    for capture in captures:
        capture.close()
    return captures


@pytest.mark.parametrize(("s", "alpha"), [(0.5, 0.0), (2.0, 0.0), (2.0, 1.0)])
def test_tsg_perturbs_only_the_reference_time_embedding(s: float, alpha: float) -> None:
    pipe = tiny_pipeline("sd")
    [capture] = _time_embedding_rows(pipe, {"scale": 3.0, "reference": {"name": "tsg", "s": s, "alpha": alpha}})
    base = tiny_pipeline("sd").unet
    for (args, _, out) in capture.seen:
        clean = base.time_embedding(args[0])  # the embedding of the same t without perturbation
        assert torch.allclose(out[:2], clean[:2], atol=1e-6)  # conditional rows untouched
        assert torch.allclose(args[0][:2], args[0][2:])  # same t projected for both
        assert (out[2:] - clean[2:]).abs().max() > 0


def test_tsg_noise_scales_with_s_and_t_alpha() -> None:
    """Same seed, same draws: doubling s doubles the perturbation; α = 1 multiplies it by t = timestep/1000."""
    deltas = {}
    for s, alpha in [(1.0, 0.0), (2.0, 0.0), (1.0, 1.0)]:
        pipe = tiny_pipeline("sd")
        [capture] = _time_embedding_rows(pipe, {"scale": 3.0, "reference": {"name": "tsg", "s": s, "alpha": alpha}})
        base = tiny_pipeline("sd").unet
        deltas[s, alpha] = [(out[2:] - base.time_embedding(args[0])[2:]) for args, _, out in capture.seen]
    pipe = tiny_pipeline("sd")
    pipe.scheduler.set_timesteps(4)
    for k, t in enumerate(pipe.scheduler.timesteps):
        assert torch.allclose(deltas[2.0, 0.0][k], 2 * deltas[1.0, 0.0][k], atol=1e-5)
        assert torch.allclose(deltas[1.0, 1.0][k], (float(t) / 1000) * deltas[1.0, 0.0][k], atol=1e-5)


def test_tsg_on_sdxl_leaves_text_and_size_embeddings_untouched() -> None:
    pipe = tiny_pipeline("sdxl")
    added, attention = Capture(pipe.unet.add_embedding), Capture(cross_attention(pipe.unet))
    guidance.run(pipe, {"scale": 3.0, "reference": "tsg"}, **strip_scales(tiny_call_kwargs("sdxl", batch=2, seed=0)))
    for (_, _, out), (_, kwargs, _) in zip(added.seen, attention.seen, strict=True):
        assert torch.equal(out[:2], out[2:])  # pooled text + size conditioning: same as the conditional rows
        assert torch.equal(kwargs["encoder_hidden_states"][:2], kwargs["encoder_hidden_states"][2:])
    added.close()
    attention.close()


def test_tsg_on_dit_same_noise_in_every_block_and_class_untouched() -> None:
    pipe = tiny_pipeline("dit")
    classes = Capture(pipe.transformer.transformer_blocks[0].norm1.emb.class_embedder)
    captures = _time_embedding_rows(pipe, {"scale": 3.0, "reference": "tsg"}, family="dit")
    per_block = [[out[2:] - out[:2] for _, _, out in c.seen] for c in captures]
    per_block[0] = per_block[0][::2]  # block 0's embedder runs twice per call (its block and the final layer)
    for block in per_block[1:]:
        for a, b in zip(block, per_block[0], strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    for _, _, out in classes.seen:
        assert torch.equal(out[:2], out[2:])
    classes.close()


def test_icg_and_tsg_combined_change_condition_and_time_embedding() -> None:
    """`reference: [icg, tsg]`: the reference rows get a random class AND a perturbed time embedding."""
    pipe = tiny_pipeline("dit")
    emb = pipe.transformer.transformer_blocks[1].norm1.emb
    labels = Capture(emb.class_embedder)
    captures = _time_embedding_rows(pipe, {"scale": 3.0, "reference": ["icg", {"name": "tsg", "s": 2.0}]},
                                    family="dit")
    for args, _, _ in labels.seen:
        assert ((args[0][2:] >= 0) & (args[0][2:] < NULL_CLASS)).all()
    delta = [out[2:] - out[:2] for _, _, out in captures[1].seen]
    assert all(d.abs().max() > 0 for d in delta)
    labels.close()


def test_icg_prompt_on_wan_uses_its_own_text_encoding() -> None:
    """Wan: ICG's reference rows carry random prompts encoded by the pipeline's UMT5 encoder at the call's length
    (a call of their own after the conditional one; no negative call runs)."""
    from guidance.pipelines.adapters.base import RANDOM_PROMPTS
    from guidance.pipelines.testing.components import t5_text_encoder, tiny_tokenizer

    base = tiny_pipeline("wan")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    pipe = type(base)(**{**base.components, "tokenizer": tokenizer,
                         "text_encoder": t5_text_encoder(tokenizer, multilingual=True)})
    pipe.set_progress_bar_config(disable=True)
    kwargs = strip_scales(tiny_call_kwargs("wan", batch=2, seed=0))
    length = kwargs["prompt_embeds"].shape[1]
    bank, _ = pipe.encode_prompt(list(RANDOM_PROMPTS), do_classifier_free_guidance=False, max_sequence_length=length)
    text = Capture(pipe.transformer.condition_embedder.text_embedder)
    stats: dict = {}
    guidance.run(pipe, {"scale": 4.0, "reference": {"name": "icg", "source": "prompt"}}, stats=stats, **kwargs)
    assert stats["denoiser_calls"] == 8 and stats["denoiser_rows"] == 16
    for (cond, _, _), (reference, _, _) in zip(text.seen[::2], text.seen[1::2], strict=True):
        assert torch.allclose(cond[0], kwargs["prompt_embeds"])
        for row in reference[0]:
            assert any(torch.allclose(row, candidate, atol=1e-6) for candidate in bank)
    text.close()
