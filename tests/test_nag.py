"""NAG (docs/CONVENTIONS.md §35): each family's guided attention module against a hand-written computation of the
official code's formula (its norm, clipping and α), the negative text stream of the joint families, scale 1 equal to
the plain pipeline, one conditional pass per step, exact restore, composition and refusals, the spec axis."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb
from test_restore import snapshot

import guidance
from guidance.attention import NAG
from guidance.pipelines.adapters import adapter_for
from guidance.pipelines.call import DenoiserCall
from guidance.pipelines.nag import NAGHook
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales

B = 2
SCALE, TAU = 4.0, 2.5


def official(pos: torch.Tensor, neg: torch.Tensor, alpha: float, p: int, variant: str,
             exercised: bool = True) -> torch.Tensor:
    """The official processors' NAG step, written from their code (float64 here): attention_nag.py (SD-XL) and
    attention_flux_nag.py (Flux: p = 2) use min(r, τ)/r, attention_joint_nag.py (SD3) adds 1e-7 to ‖Z⁺‖ and r,
    attention_wan_nag.py rescales the tokens with r > τ to ‖Z⁺‖·τ/(‖Z̃‖ + 1e-7), 0/0 read as 10."""
    pos, neg = pos.double(), neg.double()
    g = pos * SCALE - neg * (SCALE - 1)
    norm_pos = torch.norm(pos, p=p, dim=-1, keepdim=True).expand(*pos.shape)
    norm_g = torch.norm(g, p=p, dim=-1, keepdim=True).expand(*g.shape)
    if variant == "wan":
        r = torch.nan_to_num(norm_g / norm_pos, 10)
        g = g.clone()
        g[r > TAU] = g[r > TAU] / (norm_g[r > TAU] + 1e-7) * norm_pos[r > TAU] * TAU
    elif variant == "sd3":
        r = norm_g / (norm_pos + 1e-7)
        g = g * torch.minimum(r, r.new_ones(1) * TAU) / (r + 1e-7)
    else:
        r = norm_g / norm_pos
        g = g * torch.minimum(r, r.new_ones(1) * TAU) / r
    assert not exercised or ((r > TAU).any() and (r <= TAU).any())  # both branches of the clip are exercised
    return g * alpha + pos * (1 - alpha)


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.unflatten(-1, (n, -1)).transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√d) v per head (batch, heads, tokens, d), merged back to (batch, tokens, heads·d)."""
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).flatten(2)


def hooked(pipe, run, text_tokens: int = 0):
    """`run()` (without gradients) with NAG installed on the pipeline's denoiser, active for the conditional rows
    0..B; removed after."""
    hook = NAGHook(NAG(scale=SCALE, tau=TAU), adapter_for(pipe))
    hook.install()
    hook.rows, hook.batch, hook.text_tokens = slice(0, B), B, text_tokens
    try:
        with torch.no_grad():
            return run(hook)
    finally:
        hook.remove()


def inputs(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """Random tensors; with three, the third (the negative text) is near the second (the prompt) for sample 0, so
    that its tokens stay under τ while sample 1's are clipped."""
    rng = torch.Generator().manual_seed(1)
    tensors = [torch.randn(*shape, generator=rng) for shape in shapes]
    if len(tensors) == 3:
        tensors[2][0] = tensors[1][0] + 0.05 * tensors[2][0]
    return tensors


@pytest.mark.parametrize("family", ["sdxl", "sd"])
def test_unet_cross_attention_equals_the_formula(family: str) -> None:
    """SD-XL's official processor on every attn2: Z± = attention of the conditional queries to the prompt's / the
    negative prompt's keys and values; L1 norm; α 0.5."""
    pipe = tiny_pipeline(family)
    attn = next(m for m in pipe.unet.modules() if getattr(m, "is_cross_attention", False))
    width, text = attn.to_q.in_features, attn.to_k.in_features
    hidden, positive, negative = inputs((B, 6, width), (B, 5, text), (B, 5, text))
    out = hooked(pipe, lambda hook: attn(hidden, encoder_hidden_states=torch.cat([positive, negative])))
    with torch.no_grad():
        q = heads(attn.to_q(hidden), attn.heads)
        z = [attend(q, heads(attn.to_k(c), attn.heads), heads(attn.to_v(c), attn.heads)) for c in (positive, negative)]
        expected = attn.to_out[0](official(*z, alpha=0.5, p=1, variant="sdxl").float())
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_wan_cross_attention_equals_the_formula() -> None:
    """Wan's official processor: RMS-normed queries and keys, L1 norm, masked clipping, α 0.25."""
    pipe = tiny_pipeline("wan")
    attn = pipe.transformer.blocks[0].attn2
    width = attn.to_q.in_features
    hidden, positive, negative = inputs((B, 8, width), (B, 5, width), (B, 5, width))
    out = hooked(pipe, lambda hook: attn(hidden, torch.cat([positive, negative])))
    with torch.no_grad():
        q = heads(attn.norm_q(attn.to_q(hidden)), attn.heads)
        z = [attend(q, heads(attn.norm_k(attn.to_k(c)), attn.heads), heads(attn.to_v(c), attn.heads))
             for c in (positive, negative)]
        expected = attn.to_out[0](official(*z, alpha=0.25, p=1, variant="wan").float())
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _joint_context(attn, context: torch.Tensor) -> list[torch.Tensor]:
    q, k, v = (heads(proj(context), attn.heads) for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
    if attn.norm_added_q is not None:
        q, k = attn.norm_added_q(q), attn.norm_added_k(k)
    return [q, k, v]


def _joint_image(attn, hidden: torch.Tensor) -> list[torch.Tensor]:
    q, k, v = (heads(proj(hidden), attn.heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    return [q, k, v]


@pytest.mark.parametrize("family", ["sd3", "sd35"])
def test_sd3_joint_attention_equals_the_formula(family: str) -> None:
    """SD3's official joint processor: the conditional rows' image tokens attend jointly with the prompt's and with the
    negative prompt's text tokens (image first); the image outputs → NAG (L1, 1e-7 guards, α 0.125); both text
    streams keep their own outputs."""
    pipe = tiny_pipeline(family)
    attn = pipe.transformer.transformer_blocks[0].attn
    width = attn.to_q.in_features
    hidden, positive, negative = inputs((B, 6, width), (B, 5, width), (B, 5, width))
    image, text = hooked(pipe, lambda hook: attn(hidden, encoder_hidden_states=torch.cat([positive, negative])))
    with torch.no_grad():
        own = _joint_image(attn, hidden)
        joint = [[attend(*(torch.cat([x, c], dim=2) for x, c in zip(own, _joint_context(attn, ctx), strict=True)))]
                 for ctx in (positive, negative)]
        z = [j[0][:, :6] for j in joint]
        expected_image = attn.to_out[0](official(*z, alpha=0.125, p=1, variant="sd3").float())
        expected_text = attn.to_add_out(torch.cat([j[0][:, 6:] for j in joint]))
    torch.testing.assert_close(image, expected_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, expected_text, atol=1e-5, rtol=1e-5)


def _flux_ids(text: int, image: int) -> torch.Tensor:
    """Flux's position ids: the text tokens' (zeros), then the image tokens' on a 4-wide grid."""
    return torch.cat([torch.zeros(text, 3), torch.stack([torch.zeros(image), torch.arange(image) // 4,
                                                         torch.arange(image) % 4], dim=1)])


def _flux_rope(pipe, text: int, image: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pipe.transformer.pos_embed(_flux_ids(text, image))


def test_flux_double_block_attention_equals_the_formula() -> None:
    """Flux's official processor, double blocks: text first, rotary embedding on the joint sequence, L2 norm, α 0.25;
    the image output of the conditional rows guided, both text streams their own."""
    pipe = tiny_pipeline("flux")
    attn = pipe.transformer.transformer_blocks[0].attn
    width = attn.to_q.in_features
    hidden, positive, negative = inputs((B, 16, width), (B, 5, width), (B, 5, width))
    rope = _flux_rope(pipe, 5, 16)
    image, text = hooked(pipe, lambda hook: attn(hidden, encoder_hidden_states=torch.cat([positive, negative]),
                                                 image_rotary_emb=rope))
    with torch.no_grad():
        own = _joint_image(attn, hidden)
        outs = []
        for ctx in (positive, negative):
            q, k, v = (torch.cat([c, x], dim=2) for x, c in zip(own, _joint_context(attn, ctx), strict=True))
            outs.append(attend(apply_rotary_emb(q, rope, sequence_dim=2), apply_rotary_emb(k, rope, sequence_dim=2),
                               v))
        expected_image = attn.to_out[0](official(outs[0][:, 5:], outs[1][:, 5:], alpha=0.25, p=2,
                                                 variant="flux").float())
        expected_text = attn.to_add_out(torch.cat([o[:, :5] for o in outs]))
    torch.testing.assert_close(image, expected_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, expected_text, atol=1e-5, rtol=1e-5)


def test_flux_single_block_attention_equals_the_formula() -> None:
    """Flux's official processor, single blocks: the negative rows are a joint sequence of their own; the image part
    of the conditional rows' and of the negative rows' output both become NAG(Z⁺, Z⁻)."""
    pipe = tiny_pipeline("flux")
    attn = pipe.transformer.single_transformer_blocks[0].attn
    width = attn.to_q.in_features
    (sequence,) = inputs((2 * B, 5 + 16, width))
    sequence[B] = sequence[0] + 0.05 * sequence[B]  # sample 0's negative row near its conditional row (under τ)
    rope = _flux_rope(pipe, 5, 16)
    out = hooked(pipe, lambda hook: attn(sequence, image_rotary_emb=rope), text_tokens=5)
    with torch.no_grad():
        q, k, v = _joint_image(attn, sequence)
        plain = attend(apply_rotary_emb(q, rope, sequence_dim=2), apply_rotary_emb(k, rope, sequence_dim=2), v)
        guided = official(plain[:B, 5:], plain[B:, 5:], alpha=0.25, p=2, variant="flux").float()
        expected = plain.clone()
        expected[:, 5:] = torch.cat([guided, guided])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def flux_by_hand(transformer, latents, t, text, pooled, ids) -> torch.Tensor:
    """The official NAG Flux transformer (transformer_flux.py, attention_flux_nag.py, the truncated norms of
    normalization.py), written out: the image stream of B rows with the conditional rows' modulation, the text stream
    of 2B rows (prompt, negative prompt) with its own, the image tokens tiled before the single blocks, the first B
    rows' output."""
    rope = transformer.pos_embed(ids)
    x = transformer.x_embedder(latents)
    temb = transformer.time_text_embed(t.repeat(2) * 1000, pooled)
    ctx = transformer.context_embedder(text)
    tokens = ctx.shape[1]

    def rotated(q, k, v):
        return attend(apply_rotary_emb(q, rope, sequence_dim=2), apply_rotary_emb(k, rope, sequence_dim=2), v)

    for block in transformer.transformer_blocks:
        nx, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(x, emb=temb[:B])
        nc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(ctx, emb=temb)
        own = _joint_image(block.attn, nx.repeat(2, 1, 1))
        out = rotated(*(torch.cat([c, i], dim=2) for i, c in zip(own, _joint_context(block.attn, nc), strict=True)))
        image = official(out[:B, tokens:], out[B:, tokens:], 0.25, 2, "flux", exercised=False).float()
        x = x + gate_msa[:, None] * block.attn.to_out[0](image)
        x = x + gate_mlp[:, None] * block.ff(block.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])
        ctx = ctx + c_gate_msa[:, None] * block.attn.to_add_out(out[:, :tokens])
        ctx = ctx + c_gate_mlp[:, None] * block.ff_context(block.norm2_context(ctx) * (1 + c_scale_mlp[:, None])
                                                           + c_shift_mlp[:, None])
    h = torch.cat([ctx, x.repeat(2, 1, 1)], dim=1)
    for block in transformer.single_transformer_blocks:
        nh, gate = block.norm(h, emb=temb)
        out = rotated(*_joint_image(block.attn, nh))
        image = official(out[:B, tokens:], out[B:, tokens:], 0.25, 2, "flux", exercised=False).float()
        out[:, tokens:] = torch.cat([image, image])
        h = h + gate[:, None] * block.proj_out(torch.cat([out, block.act_mlp(block.proj_mlp(nh))], dim=2))
    return transformer.proj_out(transformer.norm_out(h[:B, tokens:], temb[:B]))


def test_flux_transformer_equals_the_official_negative_stream() -> None:
    """A whole NAG transformer call of Flux (one double, one single block) against the official computation written
    out by hand: the negative text's stream, its negative pooled text, the tiled image tokens, the kept rows."""
    pipe = tiny_pipeline("flux")
    transformer = pipe.transformer
    latents, text, pooled = inputs((B, 16, 16), (2 * B, 5, 32))[:2] + inputs((2 * B, 32))
    text[B] = text[0] + 0.05 * text[B]  # sample 0's negative prompt near its prompt
    t = torch.tensor([0.7] * B)
    ids = _flux_ids(5, 16)
    call = DenoiserCall.bind(inspect.signature(transformer.forward), (), {
        "hidden_states": latents, "timestep": t, "pooled_projections": pooled[:B], "encoder_hidden_states": text[:B],
        "txt_ids": ids[:5], "img_ids": ids[5:], "return_dict": False})
    negative = {"encoder_hidden_states": text[B:], "pooled_projections": pooled[B:]}
    out = hooked(pipe, lambda hook: hook.run(call, slice(0, B), negative, transformer.forward)[0])
    with torch.no_grad():
        expected = flux_by_hand(transformer, latents, t, text, pooled, ids)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def sd3_by_hand(transformer, latents, t, text, pooled, rows: slice) -> torch.Tensor:
    """The official NAG SD3 transformer (pipeline_sd3_nag.py, attention_joint_nag.py, the truncated norms), written
    out for a CFG batch: the image stream of the call's rows, the text stream with the negative prompt's rows after
    them (their time-text embedding the conditional rows' own: pooled text and time), the conditional rows' image
    tokens attending again with the negative text, their image output guided, the unconditional rows' as they are."""
    n = latents.shape[0]
    x = transformer.pos_embed(latents)
    temb = transformer.time_text_embed(torch.cat([t, t[rows]]), torch.cat([pooled, pooled[rows]]))
    ctx = transformer.context_embedder(text)
    tokens = x.shape[1]
    for block in transformer.transformer_blocks:
        nx, gate_msa, shift_mlp, scale_mlp, gate_mlp, *dual = block.norm1(x, emb=temb[:n])
        if block.context_pre_only:
            nc = block.norm1_context(ctx, temb)
        else:
            nc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(ctx, emb=temb)
        own = _joint_image(block.attn, torch.cat([nx, nx[rows]]))
        out = attend(*(torch.cat([i, c], dim=2) for i, c in zip(own, _joint_context(block.attn, nc), strict=True)))
        image = out[:n, :tokens].clone()
        image[rows] = official(image[rows], out[n:, :tokens], 0.125, 1, "sd3", exercised=False).float()
        x = x + gate_msa[:, None] * block.attn.to_out[0](image)
        if dual:
            x = x + dual[1][:, None] * block.attn2(hidden_states=dual[0])
        x = x + gate_mlp[:, None] * block.ff(block.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])
        if not block.context_pre_only:
            ctx = ctx + c_gate_msa[:, None] * block.attn.to_add_out(out[:, tokens:])
            ctx = ctx + c_gate_mlp[:, None] * block.ff_context(block.norm2_context(ctx) * (1 + c_scale_mlp[:, None])
                                                               + c_shift_mlp[:, None])
    x = transformer.proj_out(transformer.norm_out(x, temb[:n]))
    p, side = transformer.config.patch_size, latents.shape[-1] // transformer.config.patch_size
    x = torch.einsum("nhwpqc->nchpwq", x.reshape(n, side, side, p, p, -1))
    return x.reshape(n, -1, side * p, side * p)


@pytest.mark.parametrize("family", ["sd3", "sd35"])
def test_sd3_transformer_equals_the_official_negative_stream(family: str) -> None:
    """A whole NAG transformer call of SD3 / SD3.5 (qk norms, a dual-attention block, a last block without text
    output) on a [uncond; cond] CFG batch against the official computation written out by hand."""
    pipe = tiny_pipeline(family)
    transformer = pipe.transformer
    latents, text, pooled = inputs((2 * B, 4, 8, 8), (3 * B, 5, 32))[:2] + inputs((2 * B, 32))
    text[2 * B] = text[B] + 0.05 * text[2 * B]  # sample 0's negative prompt near its prompt
    t = torch.tensor([700.0] * 2 * B)
    call = DenoiserCall.bind(inspect.signature(transformer.forward), (), {
        "hidden_states": latents, "timestep": t, "pooled_projections": pooled,
        "encoder_hidden_states": text[:2 * B], "return_dict": False})
    rows = slice(B, 2 * B)
    out = hooked(pipe, lambda hook: hook.run(call, rows, {"encoder_hidden_states": text[2 * B:]},
                                             transformer.forward)[0])
    with torch.no_grad():
        expected = sd3_by_hand(transformer, latents, t, text, pooled, rows)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


FAMILIES = ["flux", "flux_kontext", "sd3", "sd35", "wan", "wan22", "wan22_5b", "sdxl", "sd"]


def nag_kwargs(family: str, steps: int = 3) -> dict:
    return {**strip_scales(tiny_call_kwargs(family, batch=B, num_inference_steps=steps)), "output_type": "latent"}


@pytest.mark.parametrize("family", FAMILIES)
def test_negative_equal_to_the_prompt_changes_nothing(family: str) -> None:
    """With the negative prompt equal to the prompt Z⁻ = Z⁺ in every layer, so NAG leaves every attention output as it
    is: the whole run (the negative stream through the blocks, the image norms' embeddings, the rows kept) equals the
    run without NAG — and a different negative prompt changes it."""
    pipe = tiny_pipeline(family)
    kwargs = nag_kwargs(family)
    plain = output_tensor(guidance.run(pipe, {"scale": 1.0}, **nag_kwargs(family)))
    same = nag_kwargs(family)
    if "prompt_embeds" in kwargs:
        same["negative_prompt_embeds"] = kwargs["prompt_embeds"]
        if "pooled_prompt_embeds" in kwargs:
            same["negative_pooled_prompt_embeds"] = kwargs["pooled_prompt_embeds"]
    else:
        same["negative_prompt"] = kwargs["prompt"]
    spec = {"scale": 1.0, "attention": {"name": "nag", "scale": SCALE}}
    torch.testing.assert_close(output_tensor(guidance.run(pipe, spec, **same)), plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(output_tensor(guidance.run(pipe, spec, **nag_kwargs(family))), plain, atol=1e-3)


def test_flux_dev_distilled_guidance_input() -> None:
    """FLUX.1 [dev]'s transformer embeds the distilled guidance scale: the negative stream gets the conditional rows'
    (the official pipeline expands it to every row). With the negative prompt equal to the prompt the run equals the
    one without NAG; a different one changes it."""
    pipe = tiny_pipeline("flux")
    transformer = type(pipe.transformer).from_config({**pipe.transformer.config, "guidance_embeds": True}).eval()
    pipe = type(pipe)(**{**pipe.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    spec = {"scale": 1.0, "attention": {"name": "nag", "scale": SCALE}}
    plain = output_tensor(guidance.run(pipe, {"scale": 1.0}, guidance_scale=3.5, **nag_kwargs("flux")))
    same = {**nag_kwargs("flux"), "guidance_scale": 3.5}
    same["negative_prompt_embeds"] = same["prompt_embeds"]
    same["negative_pooled_prompt_embeds"] = same["pooled_prompt_embeds"]
    torch.testing.assert_close(output_tensor(guidance.run(pipe, spec, **same)), plain, atol=1e-5, rtol=1e-5)
    other = output_tensor(guidance.run(pipe, spec, guidance_scale=3.5, **nag_kwargs("flux")))
    assert torch.isfinite(other).all() and not torch.allclose(other, plain, atol=1e-3)


@pytest.mark.parametrize(("family", "uses_negative_pooled"), [("flux", True), ("sd3", False)])
def test_pooled_text_of_the_negative_stream(family: str, uses_negative_pooled: bool) -> None:
    """The negative text stream's time-text embedding: Flux's official pipeline feeds it the negative prompt's pooled
    text, SD3's the conditional rows' own. With the negative prompt's tokens equal to the prompt's and only its
    pooled text different, SD3 still equals the run without NAG, Flux does not."""
    pipe = tiny_pipeline(family)
    plain = output_tensor(guidance.run(pipe, {"scale": 1.0}, **nag_kwargs(family)))
    kwargs = nag_kwargs(family)
    kwargs["negative_prompt_embeds"] = kwargs["prompt_embeds"]
    out = output_tensor(guidance.run(pipe, {"scale": 1.0, "attention": {"name": "nag", "scale": SCALE}}, **kwargs))
    assert torch.allclose(out, plain, atol=1e-5) is not uses_negative_pooled


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_one_is_the_plain_pipeline_and_one_pass_per_step(family: str, row_counter) -> None:
    """φ = 1 is off: exactly the run without NAG. φ > 1: one conditional pass of B rows per step (rows counted by a
    hook on the network's first layer and by the session), with distilled-style scale 1 and with CFG."""
    pipe = tiny_pipeline(family)
    plain = output_tensor(guidance.run(pipe, {"scale": 1.0}, **nag_kwargs(family)))
    off = guidance.run(pipe, {"scale": 1.0, "attention": {"name": "nag", "scale": 1.0}}, **nag_kwargs(family))
    assert torch.equal(output_tensor(off), plain)
    counter, stats = row_counter(pipe), {}
    guidance.run(pipe, {"scale": 1.0, "attention": {"name": "nag"}}, stats=stats, **nag_kwargs(family))
    assert counter.calls == [B] * 3 and stats["denoiser_rows"] == 3 * B


@pytest.mark.parametrize("family", ["flux", "sd3", "sdxl", "wan"])
def test_composes_with_cfg_and_apg(family: str, row_counter) -> None:
    """NAG + true CFG / CFG with APG: NAG on the conditional rows only; the negative branch is the pipeline's own
    (one row group each per step); finite, and different from APG alone."""
    pipe = tiny_pipeline(family)
    apg = {"scale": 4.0, "rule": "apg"}
    alone = output_tensor(guidance.run(pipe, apg, **nag_kwargs(family)))
    counter, stats = row_counter(pipe), {}
    both = output_tensor(guidance.run(pipe, {**apg, "attention": {"name": "nag"}}, stats=stats, **nag_kwargs(family)))
    assert torch.isfinite(both).all() and not torch.allclose(both, alone, atol=1e-3)
    assert stats["denoiser_rows"] == counter.rows == 3 * 2 * B


@pytest.mark.parametrize(("family", "spec"), [
    ("sdxl", {"scale": 4.0, "terms": [{"reference": "pag"}]}),  # PAG on the self-attention, NAG on the cross-attention
    ("sd3", {"scale": 4.0, "reference": "icg"}),
    ("flux", {"scale": 1.0, "terms": [{"reference": {"name": "slg", "layers": [0]}, "scale": 2.0}]}),
    ("wan", {"scale": 3.0, "reference": "tsg", "schedule": "linear", "policy": "adaptive"}),
])
def test_composes_with_the_other_axes(family: str, spec: dict) -> None:
    """NAG next to references, terms, schedules and policies: runs, finite, and changes the result."""
    pipe = tiny_pipeline(family)
    alone = output_tensor(guidance.run(pipe, spec, **nag_kwargs(family)))
    both = output_tensor(guidance.run(pipe, {**spec, "attention": {"name": "nag"}}, **nag_kwargs(family)))
    assert torch.isfinite(both).all() and not torch.allclose(both, alone, atol=1e-3)


def processors(pipe) -> dict:
    return {name: module.__dict__.get("processor") for name, module in pipe.transformer.named_modules()} \
        if getattr(pipe, "unet", None) is None else \
        {name: module.__dict__.get("processor") for name, module in pipe.unet.named_modules()}


@pytest.mark.parametrize("family", ["flux", "sd3", "sdxl", "wan"])
def test_restored_exactly(family: str) -> None:
    """After a NAG run (also one that raises) the pipeline is as before: forward, hooks, scheduler, every attention
    processor; a plain run afterwards equals one before."""
    pipe = tiny_pipeline(family)
    before, procs = snapshot(pipe), processors(pipe)
    plain = output_tensor(guidance.run(pipe, {"scale": 1.0}, **nag_kwargs(family)))
    guidance.run(pipe, {"scale": 1.0, "attention": {"name": "nag"}}, **nag_kwargs(family))

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        guidance.run(pipe, {"scale": 1.0, "attention": {"name": "nag"}}, callback_on_step_end=boom,
                     **nag_kwargs(family))
    assert snapshot(pipe) == before and processors(pipe) == procs
    assert torch.equal(output_tensor(guidance.run(pipe, {"scale": 1.0}, **nag_kwargs(family))), plain)


def test_low_precision_is_finite() -> None:
    """bf16 Flux at a high φ: every output finite (norms in float32)."""
    pipe = tiny_pipeline("flux").to(torch.bfloat16)
    kwargs = nag_kwargs("flux")
    kwargs = {k: v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in kwargs.items()}
    out = guidance.run(pipe, {"scale": 1.0, "attention": {"name": "nag", "scale": 50.0, "tau": 5.0}}, **kwargs)
    assert torch.isfinite(output_tensor(out).float()).all()


@pytest.mark.parametrize(("family", "spec", "match"), [
    ("pixart", {"attention": "nag"}, "not implemented for PixArt"),
    ("wan_i2v", {"attention": "nag"}, "image-encoder states"),
    ("sd3", {"attention": "nag", "terms": [{"reference": "slg"}]}, "cannot share"),
    ("sd3", {"attention": "nag", "reference": "tsg"}, "cannot share"),
])
def test_refusals(family: str, spec: dict, match: str) -> None:
    with pytest.raises(guidance.GuidanceError, match=match):
        guidance.attach(tiny_pipeline(family), spec)


def test_attach_on_a_separate_call_family_needs_the_negative() -> None:
    pipe = tiny_pipeline("flux")
    with guidance.attach(pipe, {"attention": "nag", "scale": 1.0}) as session, \
            pytest.raises(guidance.GuidanceError, match="use guidance.run with negative_prompt"):
        pipe(**tiny_call_kwargs("flux", batch=B), callback_on_step_end=session.callback)


def test_spec_axis() -> None:
    """`attention` is optional (absent from to_spec when unset), round-trips, validates strictly, is listed."""
    assert "attention" not in guidance.load({"rule": "apg"}).to_spec()
    spec = guidance.load({"scale": 1, "attention": {"name": "nag", "scale": 3, "tau": 2, "alpha": 0.3}})
    assert guidance.load(spec.to_spec()) == spec and spec.attention.alpha == 0.3
    assert guidance.load({"attention": "nag"}).attention == NAG(scale=5.0, tau=2.5, alpha=None)
    assert guidance.load(Path(__file__).parents[1] / "configs" / "flux-nag.yaml").attention == NAG(alpha=0.25)
    for bad, match in [({"scale": 0.5}, "scale is φ ≥ 1"), ({"tau": 0}, "tau"), ({"alpha": 1.5}, "alpha"),
                       ({"scale": "5"}, "finite number"), ({"beta": 1}, "unknown key")]:
        with pytest.raises(guidance.GuidanceError, match=match):
            guidance.load({"attention": {"name": "nag", **bad}})
