"""NAG inside the denoiser (docs/CONVENTIONS.md §35): the conditional rows' text attention guided against the negative
prompt within the same denoiser call, as the official code (ChenDarYen/Normalized-Attention-Guidance) does it.

The call is extended, never repeated: its text condition gets one negative row per conditional row, appended after
the call's rows (`Adapter.nag_call`); the image stream keeps the call's rows. In each attention module the adapter
names (`Adapter.nag_layers`):
- "cross" (SD/SDXL `attn2`, Wan `attn2`) and "joint" (Flux double blocks, SD3): the conditional rows' projected image
  tokens are appended again as the negative rows' queries (and, in joint attention, keys and values; projected once,
  as the official code tiles them), so Z⁻ is the same queries' attention output with the negative text; at the output
  projection's input, the conditional rows' image features become NAG(Z⁺, Z⁻) (guidance.attention.nag) and the
  negative rows' are dropped. In joint attention the
  negative text rows keep their own output: the negative text runs through the blocks as a stream of its own, its
  modulation from the negative rows' time-text embedding (`Adapter.nag_call`), while the image stream's adaptive norms
  take the image rows' embeddings (the official code's truncated norms).
- "single" (Flux single blocks, one joint sequence): before the first one the image stream gets the negative rows
  (copies of the conditional rows' image tokens), which then run as rows of their own; the conditional rows' image
  part of the attention output becomes NAG(Z⁺, Z⁻), and the negative rows' image part too (the official code's). The
  denoiser's output keeps the call's rows.
Everything is undone on exit; outside a guided conditional call every hook passes through.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from guidance.attention import NAG, normalized_attention

from .call import DenoiserCall, first_output, with_first_output


@functools.cache
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.forward)


def _bound(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A module call's arguments by name (its forward's signature), without the module itself."""
    arguments = _signature(type(module)).bind(module, *args, **kwargs).arguments
    arguments.pop("self")
    return arguments


class NAGProcessor:
    """An attention module's processor with NAG on the conditional rows (see the module docstring)."""

    def __init__(self, hook: NAGHook, module: nn.Module, kind: str) -> None:
        self.hook, self.module, self.kind = hook, module, kind
        self.had, self.original = "processor" in vars(module), module.processor
        # what inspect.signature(processor.__call__) reads (diffusers' attention filters its kwargs by it)
        self.__call__ = functools.update_wrapper(functools.partial(NAGProcessor.__call__, self), self.original)
        module.processor = self

    def restore(self) -> None:
        if self.had:
            self.module.processor = self.original
        else:
            del self.module.processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> Any:
        hook = self.hook
        if hook.rows is None:
            return self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        if self.kind == "single":
            return hook.guide_single(self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs))
        rows = hidden_states.shape[0]
        if encoder_hidden_states is None or encoder_hidden_states.shape[0] == rows:
            return self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        hidden_states = torch.cat([hidden_states, hidden_states[hook.rows]])
        hook.pending = rows
        try:
            out = self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        finally:
            hook.pending = None
        return (out[0][:rows], *out[1:]) if isinstance(out, tuple) else out[:rows]


class NAGHook:
    """NAG on the denoisers of one session: installed on attach, active for the conditional rows of a call."""

    def __init__(self, method: NAG, adapter: Any) -> None:
        self.method, self.adapter = method, adapter
        self.alpha = adapter.nag_alpha if method.alpha is None else method.alpha
        self.rows: slice | None = None  # the conditional rows of the call being evaluated (None: no NAG now)
        self.batch = 0  # the call's rows before the negative rows
        self.pending: int | None = None  # rows of the attention call whose output projection is guided now
        self.text_tokens = 0  # text tokens of the joint sequence in single blocks
        self._undo: list[Any] = []

    def install(self) -> None:
        for denoiser in self.adapter.denoisers:
            for module, kind in self.adapter.nag_layers(denoiser):
                processor = NAGProcessor(self, module, kind)
                self._undo.append(processor.restore)
                if kind != "single":
                    self._hook(module.to_out[0].register_forward_pre_hook(self._project))
                    for name in ("to_q",) if kind == "cross" else ("to_q", "to_k", "to_v"):
                        self._hook(getattr(module, name).register_forward_pre_hook(self._conditional_in))
                        self._hook(getattr(module, name).register_forward_hook(self._conditional_out))
            for block in self.adapter.nag_single_blocks(denoiser):
                self._hook(block.register_forward_pre_hook(self._to_single, with_kwargs=True))
            for norm in self.adapter.nag_image_norms(denoiser):
                self._hook(norm.register_forward_pre_hook(self._image_modulation, with_kwargs=True))

    def _hook(self, handle: Any) -> None:
        self._undo.append(handle.remove)

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []

    def run(self, call: DenoiserCall, rows: slice, negative: dict[str, torch.Tensor], forward: Any) -> Any:
        """`forward` on `call` with NAG on its conditional rows `rows`; the output has the call's rows."""
        extended = self.adapter.nag_call(call, rows, negative)
        self.rows, self.batch = rows, call.batch
        try:
            out = extended.run(forward)
        finally:
            self.rows = None
        first = first_output(out)
        return out if first.shape[0] == call.batch else with_first_output(out, first[:call.batch])

    def guided(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        method = self.method
        return normalized_attention(positive, negative, method.scale, method.tau, self.alpha, self.adapter.nag_norm)

    def _project(self, module: nn.Module, args: tuple) -> tuple | None:
        """The output projection's input: the conditional rows' features → NAG(Z⁺, Z⁻ of the appended rows); the
        appended rows are dropped (their image output is not used), so the projection runs on the call's rows."""
        if self.pending is None:
            return None
        features, rows = args[0], self.rows
        guided = self.guided(features[rows], features[self.pending:])
        return (torch.cat([features[:rows.start], guided, features[rows.stop:self.pending]]), *args[1:])

    def _conditional_in(self, module: nn.Module, args: tuple) -> tuple | None:
        """An image-token projection (to_q; joint: to_k, to_v): computed on the call's rows only, ..."""
        return None if self.pending is None else (args[0][:self.pending], *args[1:])

    def _conditional_out(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """... and its conditional rows' result appended for the negative rows (a projection is row-wise: the same
        as projecting the appended copies, as the official code tiles the projected queries, keys and values)."""
        return None if self.pending is None else torch.cat([output, output[self.rows]])

    def guide_single(self, out: torch.Tensor) -> torch.Tensor:
        """A single block's attention output (text then image tokens): NAG on the image part of the conditional and
        the negative rows."""
        if out.shape[0] == self.batch:
            return out
        text, out = self.text_tokens, out.clone()
        guided = self.guided(out[self.rows, text:], out[self.batch:, text:])
        out[self.rows, text:] = guided
        out[self.batch:, text:] = guided
        return out

    def _to_single(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        """Before a single block: the image stream gets the negative rows (the conditional rows' image tokens)."""
        if self.rows is None:
            return None
        arguments = _bound(module, args, kwargs)
        hidden, text = arguments["hidden_states"], arguments["encoder_hidden_states"]
        self.text_tokens = text.shape[1]
        if hidden.shape[0] < text.shape[0]:
            arguments["hidden_states"] = torch.cat([hidden, hidden[self.rows]])
        return (), arguments

    def _image_modulation(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        """An adaptive norm of the image stream: its embedding cut to the stream's rows (the text stream's, extended,
        passes unchanged)."""
        if self.rows is None:
            return None
        arguments = _bound(module, args, kwargs)
        rows = next(iter(arguments.values())).shape[0]
        cut = {name: value[:rows] if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] > rows
               else value for name, value in arguments.items()}
        return (), cut
