"""A diffusers pipeline for class-conditional models (the digits reference model, the analytic mixture).

Its CFG batch is [null; cond] like Stable Diffusion's, so guidance treats it like any other pipeline.
`output_type="latent"` returns the raw final sample (unclipped: saturation metrics need it), "pt" images in
[0, 1], "np" and "pil" as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor


class ClassConditionalPipeline(DiffusionPipeline):
    """Sample x ~ p(x | class) with a class-conditional denoiser whose last class embedding is the null class
    (label `null_class`: unconditional samples)."""

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: Any, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self._guidance_scale = 1.0

    @property
    def num_classes(self) -> int:
        return int(self.unet.config.num_class_embeds) - 1

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def sample_shape(self) -> tuple[int, ...]:
        shape = getattr(self.unet, "sample_shape", None)
        if shape is not None:
            return tuple(shape)
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    def _labels(self, class_labels: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(class_labels, device=self._execution_device).reshape(-1).long()
        if ((labels < 0) | (labels > self.null_class)).any():
            raise ValueError(f"class labels must be in [0, {self.num_classes - 1}] (or {self.null_class}, the null "
                             f"class, for unconditional samples), got {labels.tolist()}")
        return labels

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | Sequence[int] | torch.Tensor,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per label; `eta` is DDIM's η (ignored by schedulers without it)."""
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback tensor inputs {sorted(unknown)} are not available: only "
                             f"{self._callback_tensor_inputs}")
        self._guidance_scale = guidance_scale
        device = self._execution_device
        labels = self._labels(class_labels)
        batch = labels.shape[0]
        if latents is None:
            latents = randn_tensor((batch, *self.sample_shape), generator=generator, device=device,
                                   dtype=self.unet.dtype)
        latents = latents.to(device) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_kwargs: dict[str, Any] = {}
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        if "eta" in accepted:
            step_kwargs["eta"] = eta
        if "generator" in accepted:
            step_kwargs["generator"] = generator
        model_labels = torch.cat([torch.full_like(labels, self.null_class), labels]) if guidance_scale > 1 else labels
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = torch.cat([latents] * 2) if guidance_scale > 1 else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            prediction = self.unet(model_input, t, class_labels=model_labels).sample
            if guidance_scale > 1:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(prediction, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                outputs = callback_on_step_end(self, i, t, {"latents": latents})
                latents = outputs.pop("latents", latents)
        self.maybe_free_model_hooks()
        images = self._postprocess(latents, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _postprocess(self, latents: torch.Tensor, output_type: str) -> Any:
        if output_type == "latent":
            return latents
        images = (latents / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        array = images.cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "np":
            return array
        if output_type == "pil":
            return self.numpy_to_pil(array)
        raise ValueError(f"output_type must be 'latent', 'pt', 'np' or 'pil', not {output_type!r}")

