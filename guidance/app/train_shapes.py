"""Train the captioned-scene models: the judge, and the two text-to-image models — shapes-sd in the stock
StableDiffusionPipeline (a small CLIPTextModel with the grammar's word tokenizer, a UNet2DConditionModel) and
shapes-flow in the stock StableDiffusion3Pipeline (two small CLIPTextModelWithProjection, SD3's MM-DiT, flow
matching; no T5) — on one tiny AutoencoderKL (32×32 RGB ↔ 8×8×16). Runs offline on a CPU; each run writes its
command, settings and results to the model folder's training.json. The shipped models were made with

    python -m guidance.app.train_shapes judge --out pipelines/models/shapes-judge
    python -m guidance.app.train_shapes vae --out VAE --threads 2
    python -m guidance.app.train_shapes sd --vae VAE --out pipelines/models/shapes-sd --steps 10000 --caption-noise 0
    python -m guidance.app.train_shapes flow --vae VAE --out pipelines/models/shapes-flow --steps 10000 \
        --caption-noise 0.15

in two stages, as latent diffusion does (Rombach et al., CVPR 2022): the autoencoder alone, then, with it frozen,
the denoiser and the text encoder(s) together on its latents (there is no pretrained text encoder for this
vocabulary, so they learn from scratch), with caption dropout (the empty prompt is the unconditional input, as in
the stock pipelines' CFG). SD3 is the flow family because its stock pipeline runs on CLIP encoders alone
(text_encoder_3=None), which share the word tokenizer; FLUX's pipeline needs a T5 encoder and tokenizer as well.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import JointAttnProcessor2_0
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..pipelines.bundled import JUDGES, bundled_judge
from ..pipelines.shape_judge import ATTRIBUTES, ShapeJudge
from ..pipelines.shapes import HELD_OUT_SEED, SIZE, caption, generate, mislabel, one_object_targets
from ..pipelines.shapes_text import MAX_TOKENS, word_tokenizer
from .train_digits import cosine_warmup, noise_scheduler, sampling_scheduler, training_target

COMMAND = "python -m guidance.app.train_shapes"


def one_object_scenes(n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`n` one-object scenes as tensors: images (n, 3, 32, 32) and each attribute's class indices."""
    scenes = generate(n, seed=seed, kinds=("one",))
    targets = one_object_targets(scenes.scenes)
    return torch.from_numpy(scenes.images), {name: torch.from_numpy(t) for name, t in targets.items()}


def judge_accuracy(judge: ShapeJudge, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """The share of images with each attribute read right, and with all of them right ("all")."""
    read = judge.read(images)
    right = {name: read[name] == targets[name] for name in ATTRIBUTES}
    accuracy = {name: r.float().mean().item() for name, r in right.items()}
    accuracy["all"] = torch.stack(list(right.values())).all(0).float().mean().item()
    return accuracy


def train_judge(out: Path, steps: int = 3000, batch: int = 128, scenes_per_round: int = 4096, noise: float = 0.15,
                blur: float = 0.5, held_out: int = 2000, seed: int = 0, lr: float = 2e-3) -> dict[str, Any]:
    """Train the judge on freshly generated one-object scenes (a new set every `scenes_per_round` samples), with
    Gaussian pixel noise of a random σ ∈ [0, noise], a small colour shift and, for a share `blur` of the images, a
    3×3 box blur as augmentation (generated images are never clean, and an autoencoder softens edges); report its
    accuracy on `held_out` scenes it never saw."""
    torch.manual_seed(seed)
    judge = ShapeJudge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    start, losses, rounds = time.time(), [], 0
    for step in range(steps):
        if step * batch >= rounds * scenes_per_round:
            images, targets = one_object_scenes(scenes_per_round, seed=seed * 10_000 + rounds)
            rounds += 1
        index = torch.randint(0, len(images), (batch,), generator=generator)
        sigma = noise * torch.rand(batch, 1, 1, 1, generator=generator)
        shift = 0.05 * torch.randn(batch, 3, 1, 1, generator=generator)
        x = images[index]
        blurred = torch.rand(batch, generator=generator) < blur
        x[blurred] = F.avg_pool2d(F.pad(x[blurred], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = x + shift + sigma * torch.randn(x.shape, generator=generator)
        logits = judge(x)
        loss = sum(F.cross_entropy(logits[name], targets[name][index]) for name in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    judge.eval()
    accuracy = judge_accuracy(judge, *one_object_scenes(held_out, seed=HELD_OUT_SEED))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(judge.state_dict(), out / "model.safetensors")
    record = {"command": " ".join([COMMAND, *sys.argv[1:]]), "seed": seed, "steps": steps, "batch": batch,
              "scenes_per_round": scenes_per_round, "rounds": rounds, "noise": noise, "blur": blur, "lr": lr,
              "held_out_scenes": held_out, "held_out_seed": HELD_OUT_SEED, "held_out_accuracy": accuracy,
              "final_loss": sum(losses[-100:]) / len(losses[-100:]),
              "parameters": sum(p.numel() for p in judge.parameters()),
              "wall_time_s": round(time.time() - start, 1), "torch_threads": torch.get_num_threads()}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    return record


def build_vae(widths: tuple[int, ...] = (16, 32, 64), latent_channels: int = 16) -> AutoencoderKL:
    """A tiny AutoencoderKL: 32×32 RGB to 8×8×16 latents (two downsamplings; as many latent numbers as SD's
    16×16×4, at a quarter of the denoiser's spatial cost)."""
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(widths),
                         up_block_types=("UpDecoderBlock2D",) * len(widths), block_out_channels=widths,
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=8, sample_size=SIZE)


def object_weights(images: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Per-pixel reconstruction weights: 1 on the background, 1 + object_weight where a pixel differs from the
    background colour (the top-left pixel, which no object reaches). A small object covers ~3 % of the image, so
    plain MSE lets an autoencoder blur it into a blob (a small circle and square become alike)."""
    differs = (images - images[:, :, :1, :1]).abs().sum(1, keepdim=True) > 0.1
    return 1 + object_weight * differs.float()


def train_autoencoder(out: Path, steps: int = 4000, batch: int = 32, lr: float = 1e-3, kl_weight: float = 1e-6,
                      object_weight: float = 10.0, scenes: int = 20000, seed: int = 0,
                      check_scenes: int = 500) -> dict[str, Any]:
    """Stage 1 of both text models: the autoencoder alone, by reconstruction MSE weighted toward object pixels
    (object_weights) + kl_weight · KL on generated scenes of every kind; saved (eval mode) with scaling_factor = 1 /
    the latents' standard deviation and shift_factor = their mean (Rombach et al. §4.3.2; SD3's decoder reads the
    shift, SD's ignores it). Records the judge's accuracy on the reconstructions of held-out one-object scenes: the
    ceiling of any judged adherence of the models built on it."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images = torch.from_numpy(generate(scenes, seed=seed).images)
    held_out, targets = one_object_scenes(check_scenes, seed=HELD_OUT_SEED)
    judge = bundled_judge("shapes")
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    schedule = cosine_warmup(optimizer, steps, warmup=min(50, steps))
    start, errors = time.time(), []
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        squared = (vae.decode(posterior.sample(generator)).sample - x) ** 2
        loss = (object_weights(x, object_weight) * squared).mean() + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        errors.append(squared.mean().item())
        if (step + 1) % 500 == 0:
            with torch.no_grad():
                shape = judge_accuracy(judge, vae.decode(vae.encode(held_out).latent_dist.mean)
                                       .sample, targets)["shape"]
            print(f"autoencoder step {step + 1}/{steps} mse {sum(errors[-500:]) / 500:.5f} judged shape on "
                  f"reconstructions {shape:.3f} ({time.time() - start:.0f} s)", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images[:2048].split(512)])
        reconstructed = vae.decode(vae.encode(held_out).latent_dist.mean).sample
    vae.register_to_config(scaling_factor=1.0 / latents.std().item(), shift_factor=latents.mean().item())
    vae.save_pretrained(out, safe_serialization=True)
    record = {"command": " ".join([COMMAND, *sys.argv[1:]]), "seed": seed, "scenes": scenes, "steps": steps,
              "batch": batch, "lr": lr, "kl_weight": kl_weight, "object_weight": object_weight,
              "final_mse": sum(errors[-100:]) / 100,
              "held_out_mse": F.mse_loss(reconstructed, held_out).item(),
              "judge_on_reconstructions": judge_accuracy(judge, reconstructed, targets),
              "parameters": sum(p.numel() for p in vae.parameters()), "wall_time_s": round(time.time() - start, 1),
              "torch_threads": torch.get_num_threads(), "device": "cpu"}
    (Path(out) / "training.json").write_text(json.dumps(record, indent=1))
    return record


def build_text_encoder(tokenizer: CLIPTokenizer, width: int = 64, layers: int = 2,
                       projection: int | None = None) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A small CLIP text encoder whose start, end and padding ids are the tokenizer's; with `projection`, the
    projected variant SD3 takes (its pooled output feeds the transformer's time-text embedding)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=projection or width)
    return CLIPTextModel(config) if projection is None else CLIPTextModelWithProjection(config)


def build_text_unet(latent_channels: int, width: int = 32, cross_attention_dim: int = 64) -> UNet2DConditionModel:
    """A small latent UNet (8×8 latents) with cross-attention to the text encoder at the two finer levels and the
    middle."""
    return UNet2DConditionModel(
        sample_size=SIZE // 4, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=(width, 2 * width, 2 * width), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
        cross_attention_dim=cross_attention_dim, attention_head_dim=8)


def build_flow_transformer(latent_channels: int, heads: int = 5, layers: int = 5,
                           text_width: int = 64) -> SD3Transformer2DModel:
    """A small MM-DiT (SD3's transformer) on 8×8 latents, one token per latent pixel (patch size 1)."""
    return SD3Transformer2DModel(
        sample_size=SIZE // 4, patch_size=1, in_channels=latent_channels, out_channels=latent_channels,
        num_layers=layers, attention_head_dim=16, num_attention_heads=heads, joint_attention_dim=text_width,
        caption_projection_dim=16 * heads, pooled_projection_dim=text_width, pos_embed_max_size=SIZE // 4)


@dataclass
class Latents:
    """The training set in the autoencoder's latent space: each scene's posterior mean and standard deviation
    (scaled, and for SD3 shifted, as the pipeline's decoder expects) and its caption."""

    mean: torch.Tensor
    std: torch.Tensor
    captions: list[str]

    def sample(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.mean[index] + self.std[index] * torch.randn(self.mean[index].shape, generator=generator)


def encode_scenes(vae: AutoencoderKL, scenes: int, seed: int, caption_noise: float) -> Latents:
    """Generate `scenes` scenes (half one-object, a quarter each relations and counts) and encode them; a share
    `caption_noise` of the captions describe the scene with one attribute redrawn (shapes.mislabel)."""
    data = generate(scenes, seed=seed, kinds=("one", "one", "relation", "count"))
    rng = np.random.default_rng(seed + 1)
    captions = [caption(mislabel(scene, rng)) if rng.random() < caption_noise else text
                for scene, text in zip(data.scenes, data.captions, strict=True)]
    with torch.no_grad():
        posterior = torch.cat([vae.encode(chunk).latent_dist.parameters
                               for chunk in torch.from_numpy(data.images).split(512)])
    mean, logvar = posterior.chunk(2, dim=1)
    scale, offset = vae.config.scaling_factor, vae.config.shift_factor or 0.0
    return Latents((mean - offset) * scale, (0.5 * logvar.clamp(-30, 20)).exp() * scale, captions)


def fit(models: list[torch.nn.Module], loss_of: Callable[[torch.Tensor], torch.Tensor], data: Latents, steps: int,
        batch: int, lr: float, ema_decay: float, generator: torch.Generator, name: str) -> tuple[list, list[float]]:
    """The denoiser and text encoder(s) trained together by AdamW (cosine decay after 100 warm-up steps, gradient
    clip 1) on `loss_of(index)` for random batches of the set; returns the EMA copies (eval mode) and the losses."""
    parameters = [p for m in models for p in m.parameters()]
    ema = [copy.deepcopy(m).requires_grad_(False) for m in models]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = cosine_warmup(optimizer, steps, warmup=min(100, steps))
    start, losses = time.time(), []
    for step in range(steps):
        loss = loss_of(torch.randint(0, len(data.captions), (batch,), generator=generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            for model, averaged in zip(models, ema, strict=True):
                for p_ema, p in zip(averaged.parameters(), model.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 250 == 0:
            print(f"{name} step {step + 1}/{steps} loss {sum(losses[-250:]) / 250:.4f} ({time.time() - start:.0f} s)",
                  flush=True)
    return [m.eval() for m in ema], losses


def dropped_captions(data: Latents, index: torch.Tensor, dropout: float, generator: torch.Generator) -> list[str]:
    """The batch's captions, each replaced by the empty prompt (the pipelines' unconditional input) with
    probability `dropout`."""
    drop = (torch.rand(len(index), generator=generator) < dropout).tolist()
    return ["" if d else data.captions[i] for i, d in zip(index.tolist(), drop, strict=True)]


def training_record(settings: dict[str, Any], vae: Path, models: dict[str, torch.nn.Module], losses: list[float],
                    start: float) -> dict[str, Any]:
    return {"command": " ".join([COMMAND, *sys.argv[1:]]), **settings, "autoencoder": str(vae),
            "autoencoder_training": json.loads((Path(vae) / "training.json").read_text()),
            "final_loss": sum(losses[-200:]) / len(losses[-200:]),
            "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
            "wall_time_s": round(time.time() - start, 1), "torch_threads": torch.get_num_threads(), "device": "cpu"}


def train_sd(out: Path, vae: Path, steps: int = 10000, scenes: int = 30000, batch: int = 64, lr: float = 1e-3,
             caption_dropout: float = 0.1, caption_noise: float = 0.0, ema_decay: float = 0.999,
             seed: int = 0) -> dict[str, Any]:
    """Stage 2 of `shapes-sd`: with the autoencoder frozen, the UNet and the CLIP text encoder together (there is no
    pretrained text encoder for this vocabulary), v-prediction on the cosine schedule, the text as the stock
    pipeline encodes it (the last hidden state); saved as a StableDiffusionPipeline with DDIM."""
    settings = {k: v for k, v in locals().items() if k not in ("out", "vae")}
    torch.manual_seed(seed)
    generator, start = torch.Generator().manual_seed(seed), time.time()
    autoencoder = AutoencoderKL.from_pretrained(vae)
    autoencoder.register_to_config(shift_factor=None)  # SD's decoder reads no shift
    data = encode_scenes(autoencoder, scenes, seed, caption_noise)
    tokenizer = word_tokenizer()
    text_encoder, unet = build_text_encoder(tokenizer), build_text_unet(autoencoder.config.latent_channels)
    scheduler = noise_scheduler("v_prediction")

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        x0 = data.sample(index, generator)
        ids = tokenizer(dropped_captions(data, index, caption_dropout, generator), padding="max_length",
                        max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        prediction = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=text_encoder(ids)[0]).sample
        return F.mse_loss(prediction, training_target(scheduler, x0, noise, t))

    (unet_ema, text_ema), losses = fit([unet, text_encoder], loss_of, data, steps, batch, lr, ema_decay, generator,
                                       "sd")
    pipe = StableDiffusionPipeline(vae=autoencoder, text_encoder=text_ema, tokenizer=tokenizer, unet=unet_ema,
                                   scheduler=sampling_scheduler(scheduler), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    record = training_record({**settings, "prediction_type": "v_prediction"}, vae,
                             {"unet": unet, "text_encoder": text_encoder, "vae": autoencoder}, losses, start)
    (Path(out) / "training.json").write_text(json.dumps(record, indent=1))
    return record


T5_ROWS = inspect.signature(StableDiffusion3Pipeline.__call__).parameters["max_sequence_length"].default


def sd3_text(encoders: list[CLIPTextModelWithProjection], tokenizer: CLIPTokenizer, captions: list[str],
             joint_width: int, t5_rows: int = T5_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """The text conditioning exactly as StableDiffusion3Pipeline.encode_prompt builds it without T5: both CLIP
    encoders' penultimate hidden states side by side (padded to the joint width), then `t5_rows` zero rows where T5's
    states would be (the pipeline's default max_sequence_length); and the two pooled projections side by side."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    outputs = [encoder(ids, output_hidden_states=True) for encoder in encoders]
    hidden = torch.cat([o.hidden_states[-2] for o in outputs], dim=-1)
    hidden = F.pad(hidden, (0, joint_width - hidden.shape[-1]))
    zeros = hidden.new_zeros(len(captions), t5_rows, joint_width)
    return torch.cat([hidden, zeros], dim=-2), torch.cat([o[0] for o in outputs], dim=-1)


class RepeatedRowAttention:
    """SD3's joint attention (diffusers' JointAttnProcessor2_0, without its IP-adapter and mask-free paths) for a
    text stream whose last row stands for `copies` identical rows: the T5 zero rows, which stay identical through
    every block since every operation is per row or attention. Attention over n identical keys and values is
    attention over one with ln n added to its logit, so the transformer computes exactly its function on the full
    sequence (gradients included) with 1 row in place of 256: training only; the saved model has the stock
    processor."""

    def __init__(self, copies: int) -> None:
        self.log_copies = math.log(copies)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batch, image_rows = hidden_states.shape[:2]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = (heads(p(hidden_states)) for p in (attn.to_q, attn.to_k, attn.to_v))
        query = query if attn.norm_q is None else attn.norm_q(query)
        key = key if attn.norm_k is None else attn.norm_k(key)
        text_query, text_key, text_value = (heads(p(encoder_hidden_states))
                                            for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        text_query = text_query if attn.norm_added_q is None else attn.norm_added_q(text_query)
        text_key = text_key if attn.norm_added_k is None else attn.norm_added_k(text_key)
        key = torch.cat([key, text_key], dim=2)
        bias = key.new_zeros(1, key.shape[2])
        bias[:, -1] = self.log_copies
        out = F.scaled_dot_product_attention(torch.cat([query, text_query], dim=2), key,
                                             torch.cat([value, text_value], dim=2), attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, key.shape[1] * key.shape[3])
        image, text = out[:, :image_rows], out[:, image_rows:]
        return attn.to_out[1](attn.to_out[0](image)), text if attn.context_pre_only else attn.to_add_out(text)


def train_flow(out: Path, vae: Path, steps: int = 10000, scenes: int = 30000, batch: int = 64, lr: float = 1e-3,
               caption_dropout: float = 0.1, caption_noise: float = 0.15, ema_decay: float = 0.999,
               seed: int = 0) -> dict[str, Any]:
    """Stage 2 of `shapes-flow`: with the autoencoder frozen, SD3's MM-DiT and its two CLIP text encoders together,
    by rectified flow matching (x_t = (1 − σ)·x0 + σ·ε, target ε − x0, σ logit-normal(0, 1) as Esser et al.,
    ICML 2024), the 256 T5 zero rows as one (RepeatedRowAttention); saved as a StableDiffusion3Pipeline (no T5: the
    stock pipeline then gives zeros in its place) with FlowMatchEulerDiscreteScheduler (shift 1: 8×8 latents need no
    high-resolution shift)."""
    settings = {k: v for k, v in locals().items() if k not in ("out", "vae")}
    torch.manual_seed(seed)
    generator, start = torch.Generator().manual_seed(seed), time.time()
    autoencoder = AutoencoderKL.from_pretrained(vae)
    data = encode_scenes(autoencoder, scenes, seed, caption_noise)
    tokenizer, width = word_tokenizer(), 32
    encoders = [build_text_encoder(tokenizer, width=width, projection=width) for _ in range(2)]
    transformer = build_flow_transformer(autoencoder.config.latent_channels, text_width=2 * width)
    transformer.set_attn_processor(RepeatedRowAttention(T5_ROWS))

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        x0 = data.sample(index, generator)
        text, pooled = sd3_text(encoders, tokenizer, dropped_captions(data, index, caption_dropout, generator),
                                2 * width, t5_rows=1)
        noise = torch.randn(x0.shape, generator=generator)
        sigma = torch.sigmoid(torch.randn(len(index), generator=generator))[:, None, None, None]
        prediction = transformer(hidden_states=(1 - sigma) * x0 + sigma * noise, timestep=1000 * sigma.flatten(),
                                 encoder_hidden_states=text, pooled_projections=pooled).sample
        return F.mse_loss(prediction, noise - x0)

    (transformer_ema, *encoders_ema), losses = fit([transformer, *encoders], loss_of, data, steps, batch, lr,
                                                   ema_decay, generator, "flow")
    transformer_ema.set_attn_processor(JointAttnProcessor2_0())
    pipe = StableDiffusion3Pipeline(
        transformer=transformer_ema, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        vae=autoencoder, text_encoder=encoders_ema[0], tokenizer=tokenizer, text_encoder_2=encoders_ema[1],
        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(out, safe_serialization=True)
    record = training_record({**settings, "objective": "rectified flow, logit-normal(0, 1) σ"}, vae,
                             {"transformer": transformer, "text_encoders": torch.nn.ModuleList(encoders),
                              "vae": autoencoder}, losses, start)
    (Path(out) / "training.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    judge = sub.add_parser("judge", help="train the judge that reads a scene's attributes back")
    judge.add_argument("--out", type=Path, default=JUDGES["shapes"])
    judge.add_argument("--steps", type=int, default=3000)
    judge.add_argument("--batch", type=int, default=128)
    judge.add_argument("--seed", type=int, default=0)
    judge.add_argument("--threads", type=int, default=1)
    vae = sub.add_parser("vae", help="train the text models' autoencoder (stage 1)")
    vae.add_argument("--out", type=Path, required=True)
    vae.add_argument("--steps", type=int, default=4000)
    vae.add_argument("--batch", type=int, default=32)
    vae.add_argument("--seed", type=int, default=0)
    vae.add_argument("--threads", type=int, default=1)
    for name, noise, help_text in (("sd", 0.0, "train shapes-sd (StableDiffusionPipeline) on a trained autoencoder"),
                                   ("flow", 0.15, "train shapes-flow (StableDiffusion3Pipeline) on a trained "
                                                  "autoencoder")):
        stage = sub.add_parser(name, help=help_text)
        stage.add_argument("--out", type=Path, required=True)
        stage.add_argument("--vae", type=Path, required=True, help="the folder `vae` wrote")
        stage.add_argument("--steps", type=int, default=10000)
        stage.add_argument("--scenes", type=int, default=30000)
        stage.add_argument("--batch", type=int, default=64)
        stage.add_argument("--lr", type=float, default=1e-3)
        stage.add_argument("--caption-dropout", type=float, default=0.1)
        stage.add_argument("--caption-noise", type=float, default=noise,
                           help="share of captions with one attribute redrawn (0: every caption right)")
        stage.add_argument("--seed", type=int, default=0)
        stage.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "vae":
        record = train_autoencoder(args.out, steps=args.steps, batch=args.batch, seed=args.seed)
    elif args.command == "judge":
        record = train_judge(args.out, steps=args.steps, batch=args.batch, seed=args.seed)
    else:
        record = (train_sd if args.command == "sd" else train_flow)(
            args.out, args.vae, steps=args.steps, scenes=args.scenes, batch=args.batch, lr=args.lr,
            caption_dropout=args.caption_dropout, caption_noise=args.caption_noise, seed=args.seed)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
