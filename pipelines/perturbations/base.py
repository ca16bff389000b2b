"""How a reference degrades the denoiser for its own rows of a call (docs/CONVENTIONS.md §21: a perturbed reference
sees the conditional inputs; only its network is degraded, and only for its rows).

A session installs one `Perturbation` per reference that needs one and, before each denoiser call, tells it its rows
of the joined call. A perturbation changes modules through a `RowDispatch`: one per changed callable (an attention
processor, a block's forward), which runs the original on the ordinary rows and each registered perturbation's own
function on that perturbation's rows. `RowScope` tracks which rows of the joined call the code running now covers,
so dispatches nested inside each other (a skipped block holding a perturbed attention) cut the right rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from guidance.references.base import Reference

from ..call import take_rows


class RowScope:
    """The rows [start, stop) of the joined call that the computation running now covers (None: no guided call)."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, int]] = []

    def current(self) -> tuple[int, int] | None:
        return self._stack[-1] if self._stack else None

    @contextmanager
    def within(self, start: int, stop: int) -> Iterator[None]:
        self._stack.append((start, stop))
        try:
            yield
        finally:
            self._stack.pop()


class Perturbation:
    """Degrades the denoiser for the rows `rows` (of the joined call) of the current call; None: not in this call."""

    def __init__(self, reference: Reference, adapter: Any, scope: RowScope) -> None:
        self.reference, self.adapter, self.scope = reference, adapter, scope
        self.rows: slice | None = None
        self.t = 0.0  # the step's timestep / num_train_timesteps
        self.latent_size = (1, 1)  # height and width of the call's latents (image and video denoisers)
        self._undo: list[Callable[[], None]] = []

    @property
    def network(self) -> nn.Module | None:
        """A network of its own that evaluates this reference's rows (autoguidance), or None: the denoiser does."""
        return None

    def install(self, dispatches: dict[tuple[int, str], RowDispatch]) -> None:
        """Put the hooks in place; `dispatches` are shared by every perturbation of the session."""

    def start_call(self) -> None:
        """A denoiser call begins (`rows` and `t` are set)."""

    def local_rows(self, batch: int) -> slice | None:
        """This perturbation's rows within the `batch` rows the code running now covers, or None."""
        if self.rows is None:
            return None
        start, stop = self.scope.current() or (0, batch)
        low, high = max(self.rows.start, start), min(self.rows.stop, stop)
        return slice(low - start, high - start) if low < high else None

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []

    def hook(self, handle: Any) -> None:
        """Keep a torch hook handle to remove with the perturbation."""
        self._undo.append(handle.remove)

    def dispatch(self, dispatches: dict[tuple[int, str], RowDispatch], obj: Any, name: str,
                 perturbed: Callable[..., Any]) -> None:
        """Route obj.<name> through the shared RowDispatch of that callable, `perturbed` serving this one's rows."""
        key = (id(obj), name)
        if key not in dispatches:
            dispatches[key] = RowDispatch(obj, name, self.scope)
            self._undo.append(dispatches[key].restore)  # the creator restores it (removal runs in reverse order)
        dispatches[key].entries.append((self, perturbed))


class RowDispatch:
    """obj.<name> replaced by: the original on the ordinary rows, each registered perturbation's function on its
    rows, the outputs concatenated back in row order (a None in any piece gives None)."""

    def __init__(self, obj: Any, name: str, scope: RowScope) -> None:
        self.obj, self.name, self.scope = obj, name, scope
        self.had, self.previous = name in vars(obj), vars(obj).get(name)
        self.original = getattr(obj, name)
        self.entries: list[tuple[Perturbation, Callable[..., Any]]] = []
        # what inspect.signature(obj.<name>.__call__) reads (diffusers' Attention filters its kwargs by it)
        self.__call__ = functools.update_wrapper(functools.partial(RowDispatch.__call__, self), self.original)
        setattr(obj, name, self)

    def restore(self) -> None:
        if self.had:
            setattr(self.obj, self.name, self.previous)
        else:
            delattr(self.obj, self.name)

    def __getattr__(self, name: str) -> Any:  # e.g. a processor's own attributes
        return getattr(self.original, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        span = self.scope.current()
        if span is None:
            return self.original(*args, **kwargs)
        start, stop = span
        pieces = sorted((max(p.rows.start, start) - start, min(p.rows.stop, stop) - start, function)
                        for p, function in self.entries
                        if p.rows is not None and max(p.rows.start, start) < min(p.rows.stop, stop))
        if not pieces:
            return self.original(*args, **kwargs)
        batch, plan, position = stop - start, [], 0
        for low, high, function in pieces:
            if position < low:
                plan.append((position, low, self.original))
            plan.append((low, high, function))
            position = high
        if position < batch:
            plan.append((position, batch, self.original))
        outputs = []
        for low, high, function in plan:
            rows = slice(low, high)
            with self.scope.within(start + low, start + high):
                outputs.append(function(*take_rows(args, rows, batch), **take_rows(kwargs, rows, batch)))
        return _merge(outputs)


def _merge(outputs: list[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, tuple):
        return tuple(_merge(list(parts)) for parts in zip(*outputs, strict=True))
    if any(out is None for out in outputs):
        return None
    return torch.cat(outputs)
