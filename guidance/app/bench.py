"""Benchmarks: the plugin's cost against native diffusers CFG, and what the saving policies save.

Overhead (`overhead`): native CFG and every guided variant run on the same pipeline, seed and steps, interleaved
(each repeat runs every variant once, in turn); the median seconds per step is reported as a ratio to native.
Peak memory (`memory`): on CUDA the allocator's peak during one call after a warm-up call; on the CPU each variant
runs in a fresh process whose glibc malloc returns every large block to the system, so the resident-memory
high-water mark above the loaded pipeline is the peak of live tensors.
Work (`flops`): floating-point operations of one call per step (torch's FlopCounterMode: matrix products and
attention), the variant's against its baseline's — the denoiser work a variant adds, free of timing noise.
Host reads (`syncs`): values the host reads from tensors per denoising step (a host–device synchronisation when the
tensor is on an accelerator), native against the plugin: the slope between runs of N and 2N steps.
Saving (`saving`): denoiser rows, wall time and quality of the saving policies against CFG on the digits model.
"""

from __future__ import annotations

import functools
import gc
import inspect
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPAGPipeline
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from ..pipelines.api import attach, run
from ..pipelines.bundled import BUNDLED
from ..pipelines.testing.tiny import flux_like, sd15_like, tiny_call_kwargs, tiny_pipeline, wan_like

SCALE = 7.5
NATIVE = "native diffusers CFG"
NATIVE_PAG = "native diffusers PAG"  # StableDiffusionPAGPipeline on the same components: the PAG term's baseline
NATIVE_COND = "native diffusers, no CFG"  # the pipeline at guidance_scale 1 (one conditional pass): NAG's baseline
PAG_SCALE, PAG_LAYERS = 3.0, ["mid"]
QUIET = "cfg (telemetry off)"
VARIANTS: dict[str, dict[str, Any]] = {
    "cfg": {"rule": "cfg"},
    QUIET: {"rule": "cfg"},
    "apg": {"rule": {"name": "apg", "eta": 0.0, "norm_threshold": 15.0, "momentum": -0.5}},
    "cfgpp": {"rule": "cfgpp", "scale": 0.6},
    "cfg_zero_star (no zero-init)": {"rule": {"name": "cfg_zero_star", "zero_init_steps": 0}},
    "icg (gaussian)": {"reference": {"name": "icg", "source": "gaussian"}},
    "tsg": {"reference": "tsg"},
    "linear schedule": {"schedule": "linear"},
    "adaptive": {"policy": "adaptive"},
    "pag term": {"terms": [{"reference": {"name": "pag", "layers": PAG_LAYERS}, "scale": PAG_SCALE}]},
    "nag (no CFG)": {"scale": 1.0, "attention": {"name": "nag"}},
    "nag + cfg": {"attention": {"name": "nag"}},
}
# a variant's native counterpart (default: native CFG)
BASELINES = {"pag term": NATIVE_PAG, "nag (no CFG)": NATIVE_COND}
NATIVES = (NATIVE, NATIVE_PAG, NATIVE_COND)


def baseline(label: str) -> str:
    return BASELINES.get(label, NATIVE)
# glibc: serve every block above 64 KiB by mmap and unmap it when freed, so resident memory tracks live tensors.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


@dataclass(frozen=True)
class BenchPipeline:
    """A random-weight benchmark pipeline: its builder on a device, its tiny family (call arguments), the image side
    in pixels (None: the family's tiny size), for video the frame count, the text tokens of its prompt embeddings
    (None: the family's tiny call's), the call argument that switches its CFG on, and the variants it has not."""

    build: Callable[[str], Any]
    family: str = "sd"
    side: int | None = None
    frames: int | None = None
    text_tokens: int | None = None
    cfg_argument: str = "guidance_scale"
    without: tuple[str, ...] = ()


PIPELINES: dict[str, BenchPipeline] = {
    "tiny": BenchPipeline(lambda device: tiny_pipeline("sd")),
    "sd15-like": BenchPipeline(lambda device: sd15_like(64, 64, device=device), side=64),
    "sd15": BenchPipeline(lambda device: sd15_like(320, 768, device=device), side=128),
    "wan-like": BenchPipeline(lambda device: wan_like(1024, 2, device=device), family="wan", side=256, frames=17,
                              without=("pag term",)),  # its baseline is diffusers' SD PAG pipeline
    # the same with Wan's 512 text tokens (max_sequence_length), the text length NAG's extra cross-attention sees
    "wan-like-t512": BenchPipeline(lambda device: wan_like(1024, 2, device=device), family="wan", side=256, frames=17,
                                   text_tokens=512, without=("pag term",)),
    # Flux.1's structure at width 768 (2 double, 4 single blocks), 1 024 image and 512 text tokens; true CFG switch;
    # only the NAG variants (the others' host overhead is measured on the pipelines above)
    "flux-like": BenchPipeline(lambda device: flux_like(768, 2, 4, device=device), family="flux", side=128,
                               text_tokens=512, cfg_argument="true_cfg_scale",
                               without=tuple(v for v in VARIANTS if not v.startswith("nag"))),
}


class Bench:
    """One pipeline on a device, called natively or through the plugin with one of VARIANTS."""

    def __init__(self, name: str, steps: int, device: str = "cpu", dtype: str = "float32") -> None:
        if name not in PIPELINES:
            raise ValueError(f"unknown benchmark pipeline {name!r}; choose from {sorted(PIPELINES)}")
        self.spec = PIPELINES[name]
        self.name, self.steps, self.device, self.dtype = name, steps, torch.device(device), dtype
        self.pipe = self.spec.build(device).to(self.device)
        if dtype != "float32":  # (a float32 cast would only warn about Wan's float32-kept modules)
            self.pipe = self.pipe.to(getattr(torch, dtype))
        self.kwargs = self.call_kwargs(steps)
        self.denoiser_seconds = 0.0

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, "unet", None) or self.pipe.transformer

    def time_denoiser(self) -> None:
        """Accumulate the wall time spent inside the denoiser's own forward in `denoiser_seconds` (installed below
        the plugin, which wraps whatever forward it finds). On a GPU the timer synchronises around each forward,
        so the time outside it is everything else run without overlap: an upper bound of the rest's cost."""
        forward = self.denoiser.forward

        @functools.wraps(forward)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.synchronize()
            start = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                self.synchronize()
                self.denoiser_seconds += time.perf_counter() - start

        self.denoiser.forward = timed

    def call_kwargs(self, steps: int) -> dict[str, Any]:
        kwargs = tiny_call_kwargs(self.spec.family, batch=1, seed=0, num_inference_steps=steps)
        kwargs.pop(self.spec.cfg_argument)
        sizes = {"height": self.spec.side, "width": self.spec.side, "num_frames": self.spec.frames}
        if self.spec.text_tokens is not None:
            rng = torch.Generator().manual_seed(0)
            for key in ("prompt_embeds", "negative_prompt_embeds"):
                kwargs[key] = torch.randn(1, self.spec.text_tokens, kwargs[key].shape[-1], generator=rng)
        return kwargs | {"output_type": "latent"} | {k: v for k, v in sizes.items() if v is not None}

    def native(self, label: str, kwargs: dict[str, Any], scale: float = SCALE) -> Any:
        """A native baseline's output: the pipeline's own CFG, diffusers' PAG pipeline, or no CFG at all."""
        if label == NATIVE_PAG:
            return output_of(self.pag_pipe(**kwargs, guidance_scale=scale, pag_scale=PAG_SCALE))
        return output_of(self.pipe(**kwargs, **{self.spec.cfg_argument: 1.0 if label == NATIVE_COND else scale}))

    def call(self, label: str, steps: int | None = None) -> Any:
        kwargs = self.kwargs if steps is None else self.kwargs | {"num_inference_steps": steps}
        kwargs = kwargs | {"generator": torch.Generator().manual_seed(0)}
        with torch.no_grad():
            if label in NATIVES:
                return self.native(label, kwargs)
            spec = {"scale": SCALE, **VARIANTS[label]}
            if label != QUIET:
                return output_of(run(self.pipe, spec, **kwargs))
            with attach(self.pipe, spec, telemetry=False) as session:
                return output_of(self.pipe(**kwargs, guidance_scale=2.0, callback_on_step_end=session.callback))

    @functools.cached_property
    def pag_pipe(self) -> StableDiffusionPAGPipeline:
        """diffusers' PAG pipeline on this pipeline's own components (it swaps the UNet's processors per call)."""
        accepted = inspect.signature(StableDiffusionPAGPipeline.__init__).parameters
        pipe = StableDiffusionPAGPipeline(**{k: v for k, v in self.pipe.components.items() if k in accepted},
                                          pag_applied_layers=PAG_LAYERS)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self, label: str) -> tuple[float, float]:
        """Wall seconds of one call, and the seconds of it spent inside the denoiser (0 when not timed)."""
        self.synchronize()
        inside, start = self.denoiser_seconds, time.perf_counter()
        self.call(label)
        self.synchronize()
        return time.perf_counter() - start, self.denoiser_seconds - inside


def output_of(result: Any) -> Any:
    """A pipeline result's images, or its frames (video pipelines)."""
    return result.frames if hasattr(result, "frames") else result.images


def labels(bench: Bench, variants: list[str] | None = None) -> list[str]:
    """The baselines and the variants to run: `variants`, or every variant the bench's pipeline has."""
    chosen = variants or [v for v in VARIANTS if v not in bench.spec.without]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return [*dict.fromkeys([NATIVE, *(baseline(v) for v in chosen)]), *chosen]


def time_variants(bench: Bench, repeats: int = 7, variants: list[str] | None = None) -> list[dict[str, Any]]:
    """Median ms per step of native CFG and each variant over interleaved repeats, its ratio to its native baseline
    (native CFG; diffusers' PAG pipeline for the PAG term), the spread (max − min)/median, and the ratio of the
    fastest repeats (the least disturbed on a shared machine). With the denoiser timed
    (CPU), also the median ms per step spent outside the denoiser and the variant's host-side overhead: its extra
    time outside the denoiser as a share of its baseline's step (the part the plugin adds, free of the denoiser's
    run-to-run noise)."""
    names = labels(bench, variants)
    for label in names:  # warm-up
        bench.call(label)
    total: dict[str, list[float]] = {label: [] for label in names}
    outside: dict[str, list[float]] = {label: [] for label in names}
    for _ in range(repeats):
        for label in names:
            seconds, inside = bench.seconds(label)
            total[label].append(1e3 * seconds / bench.steps)
            outside[label].append(1e3 * (seconds - inside) / bench.steps)
    rows = []
    for label in names:
        median, base = statistics.median(total[label]), statistics.median(total[baseline(label)])
        row = {"variant": label, "baseline": baseline(label), "ms_per_step": median, "ratio": median / base,
               "spread": (max(total[label]) - min(total[label])) / median,
               "min_ratio": min(total[label]) / min(total[baseline(label)])}
        if bench.denoiser_seconds > 0:
            row["outside_ms_per_step"] = statistics.median(outside[label])
            row["host_overhead"] = (row["outside_ms_per_step"] - statistics.median(outside[baseline(label)])) / base
        rows.append(row)
    return rows


def _status_mb(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(key + r":\s+(\d+)", text).group(1)) / 1024


def peak_mb(bench: Bench, label: str) -> float:
    """Peak memory (MB) of one call above the memory held before it, after a warm-up call of the same variant."""
    bench.call(label)
    gc.collect()
    if bench.device.type == "cuda":
        torch.cuda.synchronize(bench.device)
        torch.cuda.reset_peak_memory_stats(bench.device)
        before = torch.cuda.memory_allocated(bench.device)
        bench.call(label)
        return (torch.cuda.max_memory_allocated(bench.device) - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    before = _status_mb("VmRSS")
    bench.call(label)
    return _status_mb("VmHWM") - before


def memory_variants(bench: Bench, repeats: int = 3, variants: list[str] | None = None) -> list[dict[str, Any]]:
    """Each variant's peak working memory (median over repeats); ratio to native. On the CPU every measurement is
    a fresh process (the bench's pipeline, steps and dtype) with MALLOC_ENV."""
    names = labels(bench, variants)
    peaks: dict[str, list[float]] = {label: [] for label in names}
    for _ in range(repeats):
        for label in names:
            if bench.device.type != "cpu":
                peaks[label].append(peak_mb(bench, label))
                continue
            command = [sys.executable, "-m", "guidance.app.bench", bench.name, label, str(bench.steps),
                       bench.dtype]
            out = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV})
            peaks[label].append(float(out.stdout.strip().splitlines()[-1]))
    return [{"variant": label, "baseline": baseline(label), "peak_mb": statistics.median(values),
             "ratio": statistics.median(values) / statistics.median(peaks[baseline(label)])}
            for label, values in peaks.items()]


if torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default not in torch.utils.flop_counter.flop_registry:
    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        """The CPU kernel of scaled_dot_product_attention counts as the GPU ones do (torch counts only those)."""
        return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_variants(bench: Bench, variants: list[str] | None = None) -> list[dict[str, Any]]:
    """GFLOP per step of each variant's call and its ratio to its native baseline's."""
    flops = {}
    for label in labels(bench, variants):
        with FlopCounterMode(display=False) as counter:
            bench.call(label)
        flops[label] = counter.get_total_flops() / bench.steps
    return [{"variant": label, "baseline": baseline(label), "gflop_per_step": value / 1e9,
             "ratio": value / flops[baseline(label)]} for label, value in flops.items()]


HOST_READS = frozenset({"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "numpy",
                        "__array__", "cpu", "equal", "allclose"})


def _site() -> str:
    """The innermost frame of the library or of diffusers on the current stack, as `file:line`."""
    for frame in reversed(traceback.extract_stack()):
        parts = Path(frame.filename).parts
        for package in ("guidance", "pipelines", "diffusers"):
            if package in parts and "bench.py" not in parts:
                return f"{'/'.join(parts[parts.index(package):])}:{frame.lineno}"
    return "elsewhere"


class HostReads(TorchFunctionMode):
    """Records where the host reads tensor values (each a synchronisation when the tensor is on an accelerator),
    except reads of the scheduler's own host-side tables (diffusers keeps σ and ᾱ on the CPU; its timesteps are on
    the device and do count)."""

    def __init__(self, scheduler: Any) -> None:
        super().__init__()
        self.scheduler, self.sites = scheduler, []

    def _host_table(self, tensor: torch.Tensor) -> bool:
        pointer = tensor.untyped_storage().data_ptr()
        return any(isinstance(v, torch.Tensor) and k != "timesteps" and v.untyped_storage().data_ptr() == pointer
                   for k, v in vars(self.scheduler).items())

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if getattr(func, "__name__", "") in HOST_READS and args and isinstance(args[0], torch.Tensor):
            if not self._host_table(args[0]):
                self.sites.append(_site())
        return func(*args, **(kwargs or {}))


def sync_sites(bench: Bench, label: str, steps: int) -> list[str]:
    """Where one call reads from the device: host reads (CPU) or the synchronisations that CUDA's sync debug mode
    reports (CUDA)."""
    if bench.device.type != "cuda":
        with HostReads(bench.pipe.scheduler) as reads:
            bench.call(label, steps)
        return reads.sites
    sites: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest: sites.append(_site()) if "synchroniz" in str(message) else None
        torch.cuda.set_sync_debug_mode("warn")
        try:
            bench.call(label, steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sites


def sync_variants(bench: Bench, steps: int = 4, variants: list[str] | None = None) -> list[dict[str, Any]]:
    """Per call and per step (slope between `steps` and 2·`steps`) synchronisations of each variant and native, and
    the sites that differ from native's (count at 2·`steps`)."""
    rows, natives = [], {}
    for label in labels(bench, variants):  # natives first
        bench.call(label, steps)  # warm-up
        short, long = sync_sites(bench, label, steps), sync_sites(bench, label, 2 * steps)
        per_step = (len(long) - len(short)) / steps
        if label in NATIVES:
            natives[label] = Counter(long)
        extra = Counter(long) - natives[baseline(label)]
        rows.append({"variant": label, "per_step": per_step, "per_call": len(short) - steps * per_step,
                     "extra_sites": ", ".join(f"{site} ×{n}" for site, n in extra.most_common()) or "-"})
    return rows


def numerics(bench: Bench, scales: tuple[float, ...] = (7.5, 100.0), variants: list[str] | None = None,
             ) -> list[dict[str, Any]]:
    """Whether each variant's latents stay finite at moderate and extreme scales (in the bench's dtype); a variant
    with its own scale (cfgpp's λ) keeps it."""
    rows = []
    for scale in scales:
        for label in labels(bench, variants):
            spec = {"scale": scale, **VARIANTS.get(label, {})}
            kwargs = bench.kwargs | {"generator": torch.Generator().manual_seed(0)}
            with torch.no_grad():
                if label in NATIVES:
                    latents = bench.native(label, kwargs, scale)
                else:
                    latents = output_of(run(bench.pipe, spec, **kwargs))
            rows.append({"variant": label, "scale": spec["scale"], "finite": bool(torch.isfinite(latents).all()),
                         "max_abs": float(latents.abs().max())})
    return rows


SAVING_SETTINGS: dict[str, dict[str, Any]] = {
    "cfg": {},
    "adaptive (γ̄ = 0.99)": {"policy": {"name": "adaptive", "threshold": 0.99}},
    "linear_ag (every 2nd guided step real)": {
        "policy": {"name": "linear_ag", "coefficients": str(BUNDLED["digits"] / "linear-ag-25.json")}},
    "linear_ag (every 3rd guided step real)": {
        "policy": {"name": "linear_ag", "coefficients": str(BUNDLED["digits"] / "linear-ag-25-every3.json")}},
    "interval (0.28, 5.42]": {"schedule": "interval"},
}


def saving(samples: int = 500, scale: float = 3.0, seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """Rows, time and quality of the saving policies against CFG at one scale on the digits model (25 DDIM
    steps), with each metric's change relative to CFG."""
    from .evaluate import Setting, evaluate

    settings = [Setting(label, {"scale": scale, **spec}) for label, spec in SAVING_SETTINGS.items()]
    rows = evaluate(settings, samples=samples, seed=seed, progress=progress)
    base = rows[0]
    return [{"setting": row["setting"], "rows_per_sample": row["rows_per_sample"],
             "rows_saved": 1 - row["rows_per_sample"] / base["rows_per_sample"],
             "seconds": row["seconds"], "time_saved": 1 - row["seconds"] / base["seconds"],
             "accuracy": row["accuracy"], "accuracy_change_points": 100 * (row["accuracy"] - base["accuracy"]),
             "fd": row["fd"], "fd_change": row["fd"] / base["fd"] - 1,
             "precision": row["precision"], "recall": row["recall"]} for row in rows]


def machine(device: str) -> str:
    """The machine a benchmark ran on, in one line."""
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = f", {torch.cuda.get_device_name(device)}" if torch.device(device).type == "cuda" else ""
    return (f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads){gpu}; python "
            f"{platform.python_version()}, torch {torch.__version__}, diffusers {_version('diffusers')}")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":  # one memory measurement in a fresh process: NAME LABEL STEPS DTYPE
    _, pipeline, variant, n, precision = sys.argv
    torch.set_num_threads(1)
    print(peak_mb(Bench(pipeline, int(n), "cpu", precision), variant))
