"""One denoiser call as data: its arguments by name, with row selection over every batched tensor."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from guidance.errors import GuidanceError
from guidance.references.base import Reference

Rows = slice | torch.Tensor
Path = tuple[str, ...]


def _take(value: Any, rows: Rows, batch: int, skip: frozenset[str], dims: Mapping[str, int], key: str = "",
          lists: frozenset[str] = frozenset()) -> Any:
    """`value` with every batch-sized tensor in it (also inside mappings, lists and tuples: ControlNet residuals,
    IP-Adapter image embeds) cut to `rows`; a tensor under a key of `dims` has its batch in that dimension; a list
    under a key of `lists` holds one entry per row."""
    if key in skip:
        return value
    if key in lists and isinstance(value, list):
        return value[rows] if isinstance(rows, slice) else [value[i] for i in rows.tolist()]
    if isinstance(value, torch.Tensor):
        dim = dims.get(key, 0)
        if value.ndim > dim and value.shape[dim] == batch:
            return value[(slice(None),) * dim + (rows,)] if isinstance(rows, slice) else value.index_select(dim, rows)
        return value
    if isinstance(value, Mapping):
        return {k: _take(v, rows, batch, skip, dims, k, lists) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_take(v, rows, batch, skip, dims) for v in value)
    return value


def _concat(parts: list[Any], skip: frozenset[str], dims: Mapping[str, int], batch: int, key: str = "",
            lists: frozenset[str] = frozenset()) -> Any:
    """The calls' arguments joined row-wise: batch-sized tensors and per-row lists (`lists`) concatenated, everything
    else from the first."""
    first = parts[0]
    if key in skip:
        return first
    if key in lists and isinstance(first, list):
        return [entry for part in parts for entry in part]
    dim = dims.get(key, 0)
    if isinstance(first, torch.Tensor) and first.ndim > dim and first.shape[dim] == batch:
        return torch.cat(parts, dim=dim)
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in parts], skip, dims, batch, k, lists) for k in first}
    if type(first) in (list, tuple):
        return type(first)(_concat(list(items), skip, dims, batch) for items in zip(*parts, strict=True))
    return first


def first_output(out: Any) -> torch.Tensor:
    """The prediction tensor of a denoiser (or scheduler) output: a tuple's first item or an output's first field."""
    return out[0] if isinstance(out, tuple) else next(iter(out.values()))


def with_first_output(out: Any, tensor: torch.Tensor) -> Any:
    """`out` with its prediction tensor replaced by `tensor` (same output type)."""
    if isinstance(out, tuple):
        return (tensor, *out[1:])
    key = next(iter(out.keys()))
    return type(out)(**{**out, key: tensor})


def take_rows(value: Any, rows: Rows, batch: int) -> Any:
    """`value` (a tensor, or arguments holding tensors) with every `batch`-row tensor cut to `rows`."""
    return _take(value, rows, batch, frozenset(), {})


class DenoiserCall:
    """The bound arguments of a denoiser forward; `batch` is the row count of the sample (first argument).

    `positional`: the arguments the pipeline passed by position, passed so again (a compiled denoiser then sees
    the call layout it was compiled for). `skip`: arguments never cut to rows; `batch_dims`: arguments whose batch
    is not their first dimension (HiDream's stacked Llama states: layer first), by name. `prepare`: turns the
    arguments, kept with one row per sample, into those the denoiser takes (None: as they are; see
    Adapter.per_sample). `lists`: arguments that are lists of one tensor per row (Z-Image's caption features, of
    different lengths). `finish`: turns the denoiser's output into the form guidance reads (None: as it is)."""

    def __init__(self, arguments: dict[str, Any], sample_name: str, skip: frozenset[str] = frozenset(),
                 positional: tuple[str, ...] = (), batch_dims: Mapping[str, int] | None = None,
                 prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 lists: frozenset[str] = frozenset(), finish: Callable[[Any], Any] | None = None) -> None:
        self.arguments = arguments
        self.sample_name = sample_name
        self.skip = skip
        self.positional = positional
        self.batch_dims = batch_dims or {}
        self.prepare = prepare
        self.lists = lists
        self.finish = finish

    def with_arguments(self, arguments: dict[str, Any]) -> DenoiserCall:
        """A call of the same layout (sample name, skipped, positional, batch dims, prepare, lists, finish)."""
        return DenoiserCall(arguments, self.sample_name, self.skip, self.positional, self.batch_dims, self.prepare,
                            self.lists, self.finish)

    @classmethod
    def bind(cls, signature: inspect.Signature, args: tuple, kwargs: dict[str, Any],
             skip: frozenset[str] = frozenset(), batch_dims: Mapping[str, int] | None = None) -> DenoiserCall:
        bound = signature.bind(*args, **kwargs).arguments
        arguments: dict[str, Any] = {}
        for name, value in bound.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = value
        ordered = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        positional = tuple(name for name in list(signature.parameters)[:len(args)]
                           if signature.parameters[name].kind in ordered)
        return cls(arguments, next(iter(signature.parameters)), skip, positional, batch_dims)

    @property
    def sample(self) -> torch.Tensor:
        return self.arguments[self.sample_name]

    @property
    def batch(self) -> int:
        return self.sample.shape[0]

    def take(self, rows: Rows) -> DenoiserCall:
        """The call restricted to `rows` (a slice gives views, an index tensor copies)."""
        return self.with_arguments(_take(self.arguments, rows, self.batch, self.skip, self.batch_dims,
                                         lists=self.lists))

    @staticmethod
    def concat(calls: list[DenoiserCall]) -> DenoiserCall:
        first = calls[0]
        return first.with_arguments(_concat([c.arguments for c in calls], first.skip, first.batch_dims, first.batch,
                                            lists=first.lists))

    def get(self, path: Path) -> Any:
        value: Any = self.arguments
        for key in path:
            if not isinstance(value, Mapping) or value.get(key) is None:
                return None
            value = value[key]
        return value

    def set(self, path: Path, value: Any) -> None:
        """Replace the value at `path` (nested dicts are copied, never mutated)."""
        head, *rest = path
        if rest:
            inner = dict(self.arguments.get(head) or {})
            child = DenoiserCall(inner, self.sample_name)
            child.set(tuple(rest), value)
            value = child.arguments
        self.arguments = {**self.arguments, head: value}

    def run(self, forward: Callable[..., Any]) -> Any:
        arguments = self.arguments if self.prepare is None else self.prepare(self.arguments)
        keywords = {k: v for k, v in arguments.items() if k not in self.positional}
        out = forward(*(arguments[name] for name in self.positional), **keywords)
        return out if self.finish is None else self.finish(out)


@dataclass
class Group:
    """Rows of a step's evaluation with one purpose: `reference` (if any) prepares their conditions (icg) and its
    perturbation degrades the network for them (pag, slg, tsg, …); None: evaluated as given. `conditional`: the
    group's conditional rows, where it also holds others (the pipeline's own [uncond; cond] batch); None: all of a
    group without reference."""

    call: DenoiserCall
    reference: Reference | None = None
    conditional: slice | None = None

    def conditional_rows(self) -> slice | None:
        """The group's conditional rows (attention guidance acts on them), or None."""
        if self.reference is not None:
            return None
        return self.conditional or slice(0, self.call.batch)


class RowView:
    """The reference rows [start, stop) of a call, as `guidance.references.ReferenceRows` sees them."""

    def __init__(self, call: DenoiserCall, rows: slice, adapter: Any, pipe: Any) -> None:
        self.call, self.rows, self.adapter, self.pipe = call, rows, adapter, pipe
        self.kind = adapter.condition_kind
        self.num_classes = adapter.num_classes(pipe)

    def __len__(self) -> int:
        return self.rows.stop - self.rows.start

    def _dim(self, path: Path) -> int:
        return self.call.batch_dims.get(path[-1], 0)

    def _replace_rows(self, path: Path, value: torch.Tensor) -> None:
        dim = self._dim(path)
        full = self.call.get(path).clone()
        full.movedim(dim, 0)[self.rows] = value.to(full.device, full.dtype)
        self.call.set(path, full)

    def class_labels(self) -> torch.Tensor:
        return self.call.get(self.adapter.class_field)[self.rows]

    def set_class_labels(self, labels: torch.Tensor) -> None:
        self._replace_rows(self.adapter.class_field, labels)

    def embeddings(self) -> dict[str, torch.Tensor]:
        """The rows' condition embeddings by field, batch first. A per-row list field (DenoiserCall `lists`: entries of
        different lengths) is given row by row, as `field/<row>` with a batch of one."""
        found: dict[str, torch.Tensor] = {}
        for path in self.adapter.embedding_fields:
            value, key = self.call.get(path), "/".join(path)
            if path[-1] in self.call.lists and isinstance(value, list):
                found.update({f"{key}/{i}": value[i].unsqueeze(0) for i in range(self.rows.start, self.rows.stop)})
            elif isinstance(value, torch.Tensor):
                found[key] = value.movedim(self._dim(path), 0)[self.rows]
        if not found:
            fields = ", ".join("/".join(p) for p in self.adapter.embedding_fields) or "none"
            raise GuidanceError(f"ICG found no condition embedding in the {type(self.pipe).__name__} denoiser call "
                                f"(it looks in: {fields}), so its reference would equal the conditional branch. Use "
                                "reference uncond or tsg.")
        return found

    def set_embeddings(self, embeddings: dict[str, torch.Tensor]) -> None:
        for key, value in embeddings.items():
            path = tuple(key.split("/"))
            if len(path) > 1 and path[-2] in self.call.lists:  # one row of a per-row list field
                entries = list(self.call.get(path[:-1]))
                row = int(path[-1])
                entries[row] = value[0].to(entries[row].device, entries[row].dtype)
                self.call.set(path[:-1], entries)
            else:
                self._replace_rows(path, value)

    def prompt_bank(self, prompts: list[str] | None = None) -> dict[str, torch.Tensor]:
        return self.adapter.prompt_bank(self.pipe, self.embeddings(), prompts)
