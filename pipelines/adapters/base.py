"""Per-family knowledge the session needs: condition fields, time embedding, prediction channels, how to run.

How a family presents the CFG branches to its denoiser within one step (one doubled batch, or separate calls) is
its call protocol: `DoubledBatchAdapter` (adapters/doubled.py) or `SeparateCallsAdapter` (adapters/separate.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from guidance.attention import NAGNorm
from guidance.errors import GuidanceError

from ..call import DenoiserCall, Path
from .layers import attention_layers, indexed_blocks, self_attention_places

if TYPE_CHECKING:
    from guidance.spec import Guidance

    from ..session import Run, Session

# Prompts for ICG's `prompt` source: generic, mutually unrelated captions.
RANDOM_PROMPTS = (
    "a photograph of a mountain lake at dawn", "a bowl of ramen on a wooden table", "an old red bicycle",
    "a portrait of an elderly fisherman", "a city street at night in the rain", "a watercolor of tulips",
    "a golden retriever running on a beach", "the interior of a gothic cathedral", "a plate of sushi",
    "a snowy forest with a small cabin", "a vintage typewriter", "an astronaut floating in space",
    "a herd of zebras on the savanna", "a cup of coffee with latte art", "a lighthouse on a rocky coast",
    "a child flying a kite in a park",
)


class Adapter:
    """How guidance plugs into one pipeline family."""

    denoiser_attr: ClassVar[str] = "unet"
    expert_attrs: ClassVar[tuple[str, ...]] = ()  # further denoisers a pipeline switches to within a run, if present
    calls_per_step: ClassVar[int] = 1  # denoiser calls of a step that carry the guidance branches
    embedding_fields: ClassVar[tuple[Path, ...]] = (("encoder_hidden_states",),)
    class_field: ClassVar[Path | None] = None
    skip_keys: ClassVar[frozenset[str]] = frozenset()
    batch_dims: ClassVar[Mapping[str, int]] = MappingProxyType({})  # arguments whose batch is not dim 0, by name
    timestep_field: ClassVar[Path] = ("timestep",)  # the denoiser's timestep argument
    timestep_scale: ClassVar[float] = 1.0  # denoiser timestep argument × this = the scheduler's timestep
    pag_layers: ClassVar[tuple[str, ...]] = ()  # default `layers` of pag and seg: diffusers' PAG default, or ours
    block_lists: ClassVar[tuple[str, ...]] = ()  # the denoiser's main block list(s), for slg and stg
    skip_layers: ClassVar[tuple[int, ...]] = ()  # default `layers` of slg and stg
    negated: ClassVar[bool] = False  # the pipeline negates the denoiser's output before its scheduler step
    # whether a step's row groups (conditional, references, terms) share one denoiser call; False where the pipeline
    # itself never runs more than one prompt's rows per call, so that peak memory stays the pipeline's own
    joins_groups: ClassVar[bool] = True
    joint_blocks: ClassVar[bool] = False  # blocks take and return both streams: (encoder_hidden_states, hidden_states)
    hidden_states_first: ClassVar[bool] = False  # joint blocks return (hidden_states, encoder_hidden_states)
    attention_refusal: ClassVar[str] = ""  # why pag, seg and stg's attention mode cannot serve it ("": they can)
    # NAG (docs/CONVENTIONS.md §35): the family's official norm and α, the condition fields whose appended rows are the
    # negative prompt's, and those whose appended rows copy the conditional rows (the negative text stream's time-text
    # embedding)
    nag_norm: ClassVar[NAGNorm] = NAGNorm()
    nag_alpha: ClassVar[float] = 0.5
    nag_text_fields: ClassVar[tuple[Path, ...]] = (("encoder_hidden_states",),)
    nag_copied_fields: ClassVar[tuple[Path, ...]] = ()

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self._banks: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}

    @property
    def denoiser(self) -> nn.Module:
        return getattr(self.pipe, self.denoiser_attr)

    @property
    def denoisers(self) -> list[nn.Module]:
        """Every denoiser the pipeline may call in a run: the main one, then each expert present. The session routes
        all of them; perturbations change the same layers in each."""
        experts = (getattr(self.pipe, name, None) for name in self.expert_attrs)
        return [self.denoiser, *(expert for expert in experts if expert is not None)]

    def boundary(self) -> float | None:
        """The timestep below which the pipeline switches to its second denoiser (schedule `experts`); None: one."""
        return None

    # ---------------------------------------------------------------- the call protocol

    def batch_size(self, call: DenoiserCall) -> int:
        """The number of samples in the pipeline's batch, from the first denoiser call of a run."""
        raise NotImplementedError

    def guide_call(self, session: Session, call: DenoiserCall) -> Any:
        """Answer one of the step's first `calls_per_step` denoiser calls with the guided output."""
        raise NotImplementedError

    def per_sample(self, call: DenoiserCall) -> DenoiserCall:
        """The call with one row per sample in every batch-sized argument; a family whose pipeline passes some per
        frame (AnimateDiff's prompt embeddings) regroups them here and sets the call's `prepare` to undo it."""
        return call

    def check_guidance(self, guidance: Guidance) -> None:
        """Raise for a spec this family cannot serve (called when a session is made)."""

    def check_call(self, call: DenoiserCall) -> None:
        """Raise for a denoiser call of a guided run that guidance cannot serve (called for every one)."""

    def check_pipeline_call(self, needs_pipeline_reference: bool) -> None:
        """Raise for a pipeline call guidance cannot serve, when it sets its timesteps (before any denoiser step);
        `needs_pipeline_reference`: the spec's reference is the pipeline's own unconditional branch. A PAG pipeline
        with PAG on adds perturbed rows to the CFG batch and combines them with the branches guidance replaces."""
        if getattr(self.pipe, "do_perturbed_attention_guidance", False):
            name = type(self.pipe).__name__
            raise GuidanceError(
                f"{name} runs its own perturbed-attention guidance (pag_scale > 0), which guidance cannot combine with "
                "its guided prediction. Call it with pag_scale=0, or better use the pipeline without PAG "
                f"({name.replace('PAG', '')}.from_pipe(pipe)) with a pag term in the spec: terms: [{{reference: pag, "
                "scale: 3}]."
            )

    def call_time(self, timestep: torch.Tensor) -> float:
        """The time of a denoiser call, from its timestep argument (one per row, or one per token): the first entry."""
        return float(timestep.flatten()[0])

    def scheduler_timestep(self, timestep: float) -> float:
        """The scheduler's timestep for the time the pipeline passed its denoiser."""
        return timestep * self.timestep_scale

    def call_timestep(self, timestep: Any, scheduler_timestep: float) -> Any:
        """The denoiser's timestep argument for the scheduler timestep `scheduler_timestep`, typed and shaped like
        `timestep` (the argument of another step): every entry at the call's time moves to the new time (per-token
        times at 0, Wan 2.2 TI2V's image tokens, stay); `scheduler_timestep` inverted as the affine map it is."""
        offset = self.scheduler_timestep(0.0)
        value = (scheduler_timestep - offset) / (self.scheduler_timestep(1.0) - offset)
        if not isinstance(timestep, torch.Tensor):
            return type(timestep)(round(value) if isinstance(timestep, int) else value)
        new = torch.tensor(round(value) if not timestep.is_floating_point() else value, dtype=torch.float64)
        return torch.where(timestep == self.call_time(timestep), new.to(timestep.device, timestep.dtype), timestep)

    def generated_tokens(self, call: DenoiserCall) -> int | None:
        """For a denoiser on packed tokens whose sequence also holds conditioning tokens (an input image's, which the
        pipeline drops from the output): how many leading tokens are generated. None: all of them. Guidance acts on
        those tokens only; the others pass through from the conditional output."""
        return None

    def after_combination(self, cond: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        """What the pipeline does to its combined prediction after combining the branches, applied to g here so that
        the pipeline's own line yields g (the identity where it does nothing)."""
        return guided

    def end_step(self, run: Run) -> None:
        """Called after the scheduler's step: raise if the step's calls did not complete the protocol."""

    def scheduler_prediction(self, prediction: torch.Tensor) -> torch.Tensor:
        """A prediction (scheduler sign) in the layout the pipeline hands its scheduler (CFG++'s correction)."""
        return prediction

    def scheduler_batch(self, latents: torch.Tensor, rows: int) -> torch.Tensor:
        """The B-sample latents as the `rows`-row batch the pipeline steps through its scheduler."""
        return latents

    # ---------------------------------------------------------------- layers a perturbation changes

    def check_attention(self, method: str) -> None:
        """Raise when the family's self-attention cannot be perturbed row by row (`attention_refusal`)."""
        if self.attention_refusal:
            raise GuidanceError(f"{method} cannot perturb the self-attention of {type(self.pipe).__name__}: "
                                f"{self.attention_refusal}")

    def attention_layers(self, layers: Sequence[str] | None, method: str) -> list[nn.Module]:
        """The self-attention modules `layers` names (pag_applied_layers ids; None: the family's default)."""
        self.check_attention(method)
        chosen = self.pag_layers if layers is None else layers
        if not chosen:
            places = self_attention_places(self.denoiser, method)
            raise GuidanceError(f"{method} has no default layers for {type(self.pipe).__name__}: give `layers`, "
                                f"diffusers' pag_applied_layers ids of its self-attention (it sits in {places[0]}, "
                                "…).")
        return [module for denoiser in self.denoisers for module in attention_layers(denoiser, chosen, method)]

    def blocks(self, layers: Sequence[int] | None, method: str) -> list[nn.Module]:
        """The main-list blocks `layers` indexes (None: the family's default)."""
        if not self.block_lists:
            instead = ("use tsg, icg or autoguidance" if self.attention_refusal
                       else "use pag or seg, which perturb its self-attention")
            raise GuidanceError(f"{method} skips transformer blocks, and the {type(self.denoiser).__name__} of "
                                f"{type(self.pipe).__name__} has no block list; {instead}.")
        chosen = self.skip_layers if layers is None else layers
        if not chosen:
            raise GuidanceError(f"{method} has no default layers for {type(self.pipe).__name__}: give `layers`, "
                                "block indices of its main block list.")
        return [block for denoiser in self.denoisers
                for block in indexed_blocks(denoiser, self.block_lists, chosen, method)]

    def block_passthrough(self, arguments: dict[str, Any]) -> Any:
        """A skipped block's output: its input (blocks of joint-attention families return both streams where they are
        given both, in the family's order; single-stream blocks of the same families take and return one)."""
        if self.joint_blocks and arguments.get("encoder_hidden_states") is not None:
            if self.hidden_states_first:
                return arguments["hidden_states"], arguments["encoder_hidden_states"]
            return arguments["encoder_hidden_states"], arguments["hidden_states"]
        return arguments["hidden_states"]

    # ---------------------------------------------------------------- NAG (docs/CONVENTIONS.md §35)

    def nag_layers(self, denoiser: nn.Module) -> list[tuple[nn.Module, str]]:
        """The attention modules NAG guides, each with its kind: "cross" (cross-attention to the text), "joint" (text
        and image streams in one attention), "single" (one joint sequence, text tokens first)."""
        raise GuidanceError(
            f"NAG (attention: nag) is not implemented for {type(self.pipe).__name__}: it needs to know where the "
            "family's text attention is and how the official code forms the negative branch there. It runs on "
            "FluxPipeline, FluxKontextPipeline, StableDiffusion3Pipeline, WanPipeline (text-to-video) and "
            "StableDiffusionPipeline/StableDiffusionXLPipeline; elsewhere use the pipeline's negative prompt with "
            "reference uncond.")

    def nag_single_blocks(self, denoiser: nn.Module) -> list[nn.Module]:
        """Blocks on one joint sequence, before which the image stream gets the negative rows (Flux's single)."""
        return []

    def nag_image_norms(self, denoiser: nn.Module) -> list[nn.Module]:
        """Adaptive norms of the image stream, whose time-text embedding is cut to the image rows (joint families)."""
        return []

    def check_nag(self, guidance: Guidance) -> None:
        """Raise when NAG cannot compose with the spec on this family (called when a session is made)."""
        for denoiser in self.denoisers:
            self.nag_layers(denoiser)

    def nag_negative(self, call: DenoiserCall, given: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The negative prompt's condition fields for the B samples of a pipeline call: `given` (encoded by
        guidance.run from the call's negative prompt) where the family has no negative rows of its own."""
        if given is None:
            raise GuidanceError(
                f"NAG on {type(self.pipe).__name__} needs the negative prompt's embeddings before the conditional "
                "denoiser call, which the pipeline does not hand over: use guidance.run with negative_prompt (or "
                "negative_prompt_embeds), which encodes it once per call with the pipeline's own text encoder(s).")
        return given

    def nag_encode(self, kwargs: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """For guidance.run: the negative prompt of the call `kwargs`, encoded by the pipeline's own encoder(s), where
        the family's denoiser calls do not carry it (None: they do)."""
        return None

    def nag_run_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """For guidance.run: the call arguments with a negative prompt (the official code's default is "")."""
        if any(kwargs.get(key) is not None for key in ("negative_prompt", "negative_prompt_embeds")):
            return kwargs
        return {**kwargs, "negative_prompt": ""}

    def nag_call(self, call: DenoiserCall, rows: slice, negative: dict[str, torch.Tensor]) -> DenoiserCall:
        """`call` with one negative row per conditional row (`rows`) appended to its text condition
        (`nag_text_fields`: the negative prompt's; `nag_copied_fields`: the conditional rows' own)."""
        count = rows.stop - rows.start
        extended = call.with_arguments(dict(call.arguments))
        for path in self.nag_text_fields:
            value, key = call.get(path), "/".join(path)
            appended = negative[key].to(value.device, value.dtype)
            if appended.shape[0] == 1:
                appended = appended.expand(count, *appended.shape[1:])
            if appended.shape != (count, *value.shape[1:]):
                raise GuidanceError(
                    f"NAG's negative prompt embeddings ({key}) have shape {tuple(appended.shape)} where the prompt's "
                    f"conditional rows have {(count, *value.shape[1:])}: encode the negative prompt like the prompt "
                    "(same max_sequence_length, one per image or one for all).")
            extended.set(path, torch.cat([value, appended]))
        for path in self.nag_copied_fields:
            value = call.get(path)
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == call.batch:
                extended.set(path, torch.cat([value, value[rows]]))
        return extended

    # ---------------------------------------------------------------- outputs

    def prediction_channels(self, sample: torch.Tensor, out: torch.Tensor) -> int | None:
        """Output channels (dim 1 of an image or video output) holding the prediction when the denoiser also predicts
        a variance, else None. Read from the call's own tensors, not the config (Kandinsky 2.2's ControlNet UNet is
        configured for 8 input channels but sees the 4 latent channels, its hint goes in added_cond_kwargs): the
        first half of the output when the scheduler steps with a learned variance (DeepFloyd IF: stage I 3 → 3 + 3;
        stage II takes 6 channels, its image and the upscaled condition, and outputs 3 + 3), or the input's channel
        count when the output has twice as many (DiT, PixArt, Kandinsky 2.2). Inpainting (9 → 4) and the x4 upscaler
        (7 → 4) predict on all output channels; packed tokens (channels last) have no variance."""
        if out.ndim < 4:
            return None
        scheduler = getattr(self.pipe, "scheduler", None)
        variance = getattr(getattr(scheduler, "config", None), "variance_type", None)
        if variance in ("learned", "learned_range") and out.shape[1] % 2 == 0:
            return out.shape[1] // 2
        return sample.shape[1] if out.shape[1] == 2 * sample.shape[1] else None

    def prediction(self, out: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The prediction channels of a raw output for the denoiser input `sample` (a learned variance is not
        guided), in the scheduler's sign (`negated` families)."""
        channels = self.prediction_channels(sample, out)
        out = out[:, :channels] if channels else out
        return -out if self.negated else out

    def with_prediction(self, out: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """A raw output `out` with its prediction channels (the leading channels `prediction` has) replaced."""
        if self.negated:
            prediction = -prediction
        if prediction.shape == out.shape:
            return prediction
        return torch.cat([prediction, out[:, prediction.shape[1]:]], dim=1)

    def latents(self, sample: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """x_t within the denoiser's input `sample`: its leading part shaped like `prediction`. Inpainting UNets
        (9 channels) and Flux Fill append mask and masked-image channels after the latents."""
        for dim, size in enumerate(prediction.shape):
            if sample.shape[dim] > size:
                sample = sample.narrow(dim, 0, size)
        return sample

    def zero_output(self, sample: torch.Tensor) -> torch.Tensor:
        """A zero output for the denoiser input `sample`, shaped like the denoiser's output. Images and videos: the
        config's out_channels in dim 1 (a learned variance doubles them; an inpainting input has more; Kandinsky 2.2's
        ControlNet UNet sees fewer than its in_channels). Packed tokens: out_channels in the last dim when the input
        has in_channels there (Flux Fill), else the input's."""
        config = self.denoiser.config
        channels, out = config.get("in_channels"), config.get("out_channels")
        dim = sample.ndim - 1 if sample.ndim == 3 else 1
        if not out or sample.shape[dim] == out or (sample.ndim == 3 and sample.shape[dim] != channels):
            return torch.zeros_like(sample)
        shape = list(sample.shape)
        shape[dim] = out
        return sample.new_zeros(shape)

    @property
    def output_class(self) -> type:
        return Transformer2DModelOutput

    # ---------------------------------------------------------------- conditions

    @property
    def condition_kind(self) -> str:
        return "text"

    def num_classes(self, pipe: Any) -> int | None:
        return None

    def time_embedders(self) -> list[nn.Module]:
        raise NotImplementedError

    def run_kwargs(self, kwargs: dict[str, Any], needs_pipeline_reference: bool) -> dict[str, Any]:
        """The pipeline call arguments for guidance.run: CFG batching switched on."""
        for key in ("guidance_scale", "guidance_rescale"):
            if key in kwargs:
                raise GuidanceError(
                    f"guidance.run sets the pipeline's {key} itself; put the strength in the spec instead "
                    "(`scale`, `rescale`), or use guidance.attach to call the pipeline yourself."
                )
        return {**kwargs, "guidance_scale": 2.0}

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise GuidanceError(f"ICG's `prompt` source is not implemented for {type(self.pipe).__name__}; use "
                            "source: gaussian.")

    def prompt_bank(self, pipe: Any, like: dict[str, torch.Tensor],
                    prompts: list[str] | None = None) -> dict[str, torch.Tensor]:
        """`prompts` (default RANDOM_PROMPTS) encoded by the pipeline's own text encoder(s), once per session."""
        key = tuple(RANDOM_PROMPTS if prompts is None else prompts)
        if key not in self._banks:
            if getattr(pipe, "text_encoder", None) is None:
                raise GuidanceError(
                    f"ICG's `prompt` source needs the pipeline's text encoder, but this {type(pipe).__name__} "
                    "has none (it was built or called with embeddings only). Use source: gaussian."
                )
            with torch.no_grad():
                self._banks[key] = self.encode_prompts(list(key), like)
        return self._banks[key]
