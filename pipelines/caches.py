"""diffusers' caches on a denoiser (FirstBlockCache, FasterCache, MagCache, TaylorSeerCache,
PyramidAttentionBroadcast, SeaCache, TextKVCache) keep per-row state from one step to the next. Under guidance they
give the result they give natively only while every step evaluates the same rows in the same layout: the policy
`always`, a schedule without conditional-only steps, and no zero-init steps. FasterCache also approximates the
unconditional half of the pipeline's own [uncond; cond] batch, so it needs the `uncond` reference. Other
combinations are refused."""

from __future__ import annotations

from typing import Any

from guidance.errors import GuidanceError
from guidance.spec import Guidance

CACHE_HOOKS = {
    "faster_cache_denoiser": "FasterCache", "faster_cache_block": "FasterCache",
    "fbc_leader_block_hook": "FirstBlockCache", "fbc_block_hook": "FirstBlockCache",
    "mag_cache_leader_block_hook": "MagCache", "mag_cache_block_hook": "MagCache",
    "taylorseer_cache": "TaylorSeerCache", "pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "sea_cache_root": "SeaCache", "sea_cache_leader_block": "SeaCache", "sea_cache_block": "SeaCache",
    "text_kv_cache_transformer": "TextKVCache", "text_kv_cache_block": "TextKVCache",
}


def caches_on(denoiser: Any) -> list[str]:
    """The diffusers caches whose hooks sit on `denoiser` or its submodules."""
    found = set()
    for module in denoiser.modules():
        registry = getattr(module, "_diffusers_hook", None)
        found |= {CACHE_HOOKS[name] for name in getattr(registry, "hooks", {}) if name in CACHE_HOOKS}
    return sorted(found)


def _refuse(caches: list[str], problem: str, fix: str) -> GuidanceError:
    return GuidanceError(f"The denoiser carries {' and '.join(caches)}, which keeps per-row state from step to step, "
                         f"but {problem}. {fix}, or disable the cache (denoiser.disable_cache()).")


def check_spec(caches: list[str], spec: Guidance) -> None:
    """Refuse a spec whose rows change between steps by design (AG, LinearAG), or FasterCache with a reference
    that does not use the pipeline's own unconditional rows."""
    if not caches:
        return
    if spec.policy.name != "always":
        raise _refuse(caches, f"policy '{spec.policy.name}' stops evaluating reference rows during the run",
                      "Use policy always")
    if "FasterCache" in caches and spec.reference.from_condition:
        raise _refuse(["FasterCache"], f"reference '{spec.reference.name}' puts its own rows where FasterCache "
                      "expects the pipeline's unconditional half", "Use reference uncond")


def check_run(caches: list[str], spec: Guidance, scales: list[float | None]) -> None:
    """Refuse a run whose row count changes between steps: a schedule that makes some steps conditional only and
    guides others, or zero-init steps (CFG-Zero*) that evaluate nothing."""
    if not caches:
        return
    if None in scales and any(w is not None for w in scales):
        raise _refuse(caches, "the schedule makes some steps conditional only (fewer rows) and guides others",
                      "Use a schedule without conditional-only steps (constant, clamp_linear, clamp_cosine)")
    if any(w is not None and spec.rule.outputs_zero(i) for i, w in enumerate(scales)):
        raise _refuse(caches, f"rule '{spec.rule.name}' skips the denoiser at its zero-init steps",
                      "Set zero_init_steps: 0")
