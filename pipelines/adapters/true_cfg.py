"""Pipelines whose CFG is "true CFG": the prompt and the negative prompt as separate calls, switched on by
`true_cfg_scale` > 1 and a negative prompt (Flux, Qwen-Image); their `guidance_scale`, where they have one, is a
distilled-guidance input and stays the caller's. guidance.run switches true CFG on by itself (docs/CONVENTIONS.md
§17)."""

from __future__ import annotations

import inspect
from typing import Any

from guidance.errors import GuidanceError

from .separate import SeparateCallsAdapter


class TrueCFGAdapter(SeparateCallsAdapter):
    """A separate-calls family switched on by true_cfg_scale."""

    @property
    def has_true_cfg(self) -> bool:
        """Whether the pipeline has true CFG at all (Flux Fill and the Flux Control pipelines have only distilled
        guidance)."""
        return "true_cfg_scale" in inspect.signature(self.pipe.__call__).parameters

    def check_pipeline_call(self, needs_pipeline_reference: bool) -> None:
        super().check_pipeline_call(needs_pipeline_reference)
        if needs_pipeline_reference and not self.has_true_cfg:
            raise GuidanceError(
                f"{type(self.pipe).__name__} has no classifier-free guidance (no true_cfg_scale and no negative "
                "prompt; its guidance_scale is the distilled-guidance input), so reference `uncond` has nothing to "
                "contrast with. Use reference icg or tsg, which build their reference from the conditional call."
            )

    def run_kwargs(self, kwargs: dict[str, Any], needs_pipeline_reference: bool) -> dict[str, Any]:
        name = type(self.pipe).__name__
        if not self.has_true_cfg:
            return kwargs  # refused at the call's start for `uncond` (check_pipeline_call)
        if "true_cfg_scale" in kwargs:
            raise GuidanceError(f"guidance.run sets {name}'s true_cfg_scale itself; put the strength in the spec's "
                                "`scale` (a guidance_scale argument stays the distilled-guidance input).")
        kwargs = dict(kwargs)
        if not needs_pipeline_reference:
            return {**kwargs, "true_cfg_scale": 1.0}
        if kwargs.get("negative_prompt_embeds") is None and kwargs.get("negative_prompt") is None:
            if kwargs.get("prompt_embeds") is not None:
                raise GuidanceError(f"{name} with reference `uncond` needs a negative prompt: pass "
                                    "negative_prompt_embeds (and its pooled embeddings or mask) with your "
                                    "prompt_embeds (or use icg/tsg).")
            kwargs["negative_prompt"] = ""
        return {**kwargs, "true_cfg_scale": 2.0}
