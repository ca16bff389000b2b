"""A sample's output does not depend on the other samples of its batch (APG per-sample state, CFG-Zero*'s s*, AG's
per-sample switch): batch 3 with explicit latents and per-sample prompts vs batch-1 runs of each sample.

The pipelines run in float64: in float32 a plain native diffusers run of the tiny SD already differs by ~2e-5
between batch 3 and batch 1 (conv/GEMM blocking depends on the batch size), which would hide the 1e-5 check.
"""

from __future__ import annotations

import pytest
import torch

import guidance
from guidance.pipelines.testing.tiny import TEXT_DIM, TEXT_SEQ_LEN, tiny_pipeline

from conftest import output_tensor

N = 5
SAMPLES = 3
ATOL = 1e-5
DTYPE = torch.float64
PROMPTS = ["cat", "dog", "owl"]
NEGATIVES = ["blurry", "dark", "noisy"]


def inputs(family: str) -> dict:
    """Per-sample call inputs of the whole batch (latents, prompts or embeddings)."""
    rng = torch.Generator().manual_seed(7)
    latents = torch.randn(SAMPLES, 4, 8, 8, generator=rng, dtype=DTYPE)
    if family == "sd":
        return {"latents": latents, "prompt": PROMPTS, "negative_prompt": NEGATIVES}

    def embeds(*shape):
        return torch.randn(SAMPLES, *shape, generator=rng, dtype=DTYPE)

    return {"latents": latents, "prompt_embeds": embeds(TEXT_SEQ_LEN, TEXT_DIM),
            "pooled_prompt_embeds": embeds(TEXT_DIM), "negative_prompt_embeds": embeds(TEXT_SEQ_LEN, TEXT_DIM),
            "negative_pooled_prompt_embeds": embeds(TEXT_DIM)}


def select(batch: dict, rows: list[int]) -> dict:
    picked = {k: v[rows].clone() if isinstance(v, torch.Tensor) else [v[i] for i in rows] for k, v in batch.items()}
    return {**picked, "num_inference_steps": N, "height": 16, "width": 16, "output_type": "latent"}


def pipeline(family: str):
    return tiny_pipeline(family).to(DTYPE)


def run(pipe, spec: dict, kwargs: dict) -> tuple[torch.Tensor, dict]:
    stats: dict = {}
    out = output_tensor(guidance.run(pipe, spec, stats=stats, **kwargs))
    return out, stats


def assert_independent(pipe, family: str, spec: dict) -> tuple[dict, list[dict]]:
    batch = inputs(family)
    full, full_stats = run(pipe, spec, select(batch, list(range(SAMPLES))))
    singles = []
    for i in range(SAMPLES):
        one, one_stats = run(pipe, spec, select(batch, [i]))
        singles.append(one_stats)
        diff = float((full[i] - one[0]).abs().max())
        assert diff <= ATOL, f"sample {i}: batch-3 output differs from its batch-1 run by {diff}"
    # non-vacuity: the samples are really different, so mixing them up would show
    assert float((full[0] - full[1]).abs().max()) > 1e-2
    return full_stats, singles


APG = {"name": "apg", "momentum": -0.5, "norm_threshold": 1.0, "eta": 0.0}


@pytest.mark.parametrize(
    ("family", "spec"),
    [("sd", {"scale": 5.0, "rule": "cfg"}),
     ("sd", {"scale": 5.0, "rule": APG}),
     ("sd", {"scale": 5.0, "rule": {"name": "cfg_zero_star"}}),
     ("sd3", {"scale": 5.0, "rule": {"name": "cfg_zero_star"}}),
     ("sd3", {"scale": 5.0, "rule": APG})],
    ids=["sd-cfg", "sd-apg", "sd-cfg_zero_star", "sd3-cfg_zero_star", "sd3-apg"],
)
def test_rule_is_per_sample(family, spec):
    pipe = pipeline(family)
    stats, _ = assert_independent(pipe, family, spec)
    assert any(r["reference_rows"] == SAMPLES for r in stats["steps"])
    if spec["rule"] == APG:  # the clip must bind for some samples and steps, else it is not exercised
        norms = [d for r in stats["steps"] for d in r["delta_norm"]]
        assert max(norms) > APG["norm_threshold"] > min(norms)


def switch_steps(cosines: list[list[float]], threshold: float) -> list[int | None]:
    """Per sample, the first step whose cos(x̂0_c, x̂0_u) exceeds the threshold (AG's switch step), or None."""
    steps = []
    for b in range(SAMPLES):
        above = [k for k, row in enumerate(cosines) if row[b] > threshold]
        steps.append(above[0] if above else None)
    return steps


def pick_threshold(cosines: list[list[float]]) -> tuple[float, list[int | None]]:
    """A threshold between observed cosines (largest margin) at which the samples switch at different steps."""
    values = sorted({c for row in cosines for c in row})
    best = None
    for lo, hi in zip(values[:-1], values[1:], strict=True):
        threshold = (lo + hi) / 2
        steps = switch_steps(cosines, threshold)
        if len(set(steps)) >= 2 and (best is None or hi - lo > best[0]):
            best = (hi - lo, threshold, steps)
    assert best is not None and best[0] > 1e-9, "no threshold separates the samples' switch steps"
    return best[1], best[2]


def expected_reference_rows(switch: list[int | None]) -> list[int]:
    """docs/CONVENTIONS.md §16: at step k the reference rows of the samples that have not switched before k run."""
    return [sum(1 for s in switch if s is None or s >= k) for k in range(N)]


@pytest.mark.parametrize("rule", [{"name": "cfg"}, APG], ids=["cfg", "apg"])
def test_adaptive_switches_per_sample(rule, row_counter):
    pipe = pipeline("sd")
    batch = inputs("sd")
    # AG equals CFG up to a sample's switch step, and a sample's trajectory does not depend on the others: the
    # CFG run's per-sample cosines tell every sample's switch step in advance.
    _, cfg_stats = run(pipe, {"scale": 5.0, "rule": rule}, select(batch, list(range(SAMPLES))))
    cosines = [r["cosine"] for r in cfg_stats["steps"]]
    threshold, switch = pick_threshold(cosines)
    assert len(set(switch)) >= 2
    spec = {"scale": 5.0, "rule": rule, "policy": {"name": "adaptive", "threshold": threshold}}
    counter = row_counter(pipe)
    stats, singles = assert_independent(pipe, "sd", spec)
    expected = expected_reference_rows(switch)
    assert [r["reference_rows"] for r in stats["steps"]] == expected, f"switch steps {switch}, threshold {threshold}"
    assert counter.calls[:N] == [SAMPLES + n for n in expected], "the hook disagrees with the telemetry"
    for k, record in enumerate(stats["steps"]):
        live = [b for b in range(SAMPLES) if switch[b] is None or switch[b] >= k]
        assert record["cosine"] is None if not live else record["cosine"] == pytest.approx(
            [cosines[k][b] for b in live], abs=1e-9), f"step {k}: cosines of the unswitched samples"
    for b, one in enumerate(singles):
        rows = [r["reference_rows"] for r in one["steps"]]
        assert rows == [1 if switch[b] is None or switch[b] >= k else 0 for k in range(N)], f"sample {b} alone"
