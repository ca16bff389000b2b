"""Train the captioned-scene models: the judge, and the text-to-image model in the stock StableDiffusionPipeline (a
tiny AutoencoderKL, a small CLIPTextModel with the grammar's word tokenizer, a UNet2DConditionModel). Runs offline on
a CPU; each run writes its command, settings and results to the model folder's training.json. The shipped judge was
made with

    python -m guidance.app.train_shapes judge --out pipelines/models/shapes-judge

The text-to-image model (`sd`) trains in two stages, as latent diffusion does (Rombach et al., CVPR 2022): the
autoencoder alone (reconstruction + a small KL term), then, with it frozen, the UNet and the text encoder together on
its latents (there is no pretrained text encoder for this vocabulary, so it learns from scratch), with caption dropout
(the empty prompt is the unconditional input, as in the stock pipeline's CFG).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..pipelines.bundled import JUDGES, bundled_judge
from ..pipelines.shape_judge import ATTRIBUTES, ShapeJudge
from ..pipelines.shapes import SIZE, generate, one_object_targets
from ..pipelines.shapes_text import MAX_TOKENS, word_tokenizer
from .train_digits import cosine_warmup, noise_scheduler, sampling_scheduler, training_target

COMMAND = "python -m guidance.app.train_shapes"
HELD_OUT_SEED = 1_000_000  # scenes of the held-out set; training draws from seeds below it


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


def build_vae(width: int = 32) -> AutoencoderKL:
    """A tiny AutoencoderKL: 32×32 RGB to 16×16×4 latents (one downsampling)."""
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(width, 2 * width),
                         layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=SIZE)


def build_text_encoder(tokenizer: CLIPTokenizer, width: int = 64, layers: int = 2) -> CLIPTextModel:
    """A small CLIP text encoder whose start, end and padding ids are the tokenizer's."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def build_text_unet(width: int = 32, cross_attention_dim: int = 64) -> UNet2DConditionModel:
    """A small latent UNet (16×16×4) with cross-attention to the text encoder at the two finer levels."""
    return UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(width, 2 * width, 2 * width),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
        cross_attention_dim=cross_attention_dim, attention_head_dim=8)


def train_vae(images: torch.Tensor, steps: int, batch: int, lr: float, kl_weight: float,
              generator: torch.Generator) -> tuple[AutoencoderKL, float]:
    """Stage 1: the autoencoder, by reconstruction MSE + kl_weight · KL; returns it (eval mode, scaling_factor set to
    1 / the latents' standard deviation, as Rombach et al. §4.3.2) and the final reconstruction MSE."""
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    schedule = cosine_warmup(optimizer, steps, warmup=min(50, steps))
    errors = []
    for _ in range(steps):
        x = images[torch.randint(0, len(images), (batch,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        error = F.mse_loss(vae.decode(posterior.sample(generator)).sample, x)
        loss = error + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        errors.append(error.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        std = vae.encode(images[:512]).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae, sum(errors[-50:]) / len(errors[-50:])


def train_text_to_image(out: Path, steps: int = 20000, vae_steps: int = 3000, scenes: int = 20000, batch: int = 64,
                        lr: float = 1e-3, vae_lr: float = 1e-3, kl_weight: float = 1e-6, caption_dropout: float = 0.1,
                        prediction_type: str = "v_prediction", ema_decay: float = 0.999, seed: int = 0,
                        check_scenes: int = 500, log_every: int = 250) -> dict[str, Any]:
    """Train the text-to-image model on `scenes` generated scenes of every kind and save it as a
    StableDiffusionPipeline (safetensors) with DDIM as its scheduler; record the judge's accuracy on the autoencoder's
    reconstructions of `check_scenes` held-out one-object scenes (no sample of the model can be judged better)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = generate(scenes, seed=seed)
    images = torch.from_numpy(data.images)
    start = time.time()
    vae, reconstruction = train_vae(images, vae_steps, batch, vae_lr, kl_weight, generator)
    vae_time = time.time() - start
    held_out, targets = one_object_scenes(check_scenes, seed=HELD_OUT_SEED)
    with torch.no_grad():  # the ceiling of any judged adherence: the judge on the autoencoder's reconstructions
        reconstructed = vae.decode(vae.encode(held_out).latent_dist.mean).sample
        vae_judge = judge_accuracy(bundled_judge("shapes"), reconstructed, targets)
    tokenizer = word_tokenizer()
    with torch.no_grad():
        posterior = torch.cat([vae.encode(chunk).latent_dist.parameters for chunk in images.split(512)])
        tokens = tokenizer(data.captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                           return_tensors="pt").input_ids
        empty = tokenizer("", padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    mean, logvar = posterior.chunk(2, dim=1)
    mean, std = mean * vae.config.scaling_factor, (0.5 * logvar.clamp(-30, 20)).exp() * vae.config.scaling_factor
    text_encoder, unet = build_text_encoder(tokenizer), build_text_unet()
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    ema = [copy.deepcopy(m).requires_grad_(False) for m in (unet, text_encoder)]
    scheduler = noise_scheduler(prediction_type)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = cosine_warmup(optimizer, steps, warmup=min(100, steps))
    losses = []
    for step in range(steps):
        index = torch.randint(0, len(images), (batch,), generator=generator)
        x0 = mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)
        ids = tokens[index].clone()
        ids[torch.rand(batch, generator=generator) < caption_dropout] = empty
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        prediction = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = F.mse_loss(prediction, training_target(scheduler, x0, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            for model, averaged in zip((unet, text_encoder), ema, strict=True):
                for p_ema, p in zip(averaged.parameters(), model.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=ema[1].eval(), tokenizer=tokenizer, unet=ema[0].eval(),
                                   scheduler=sampling_scheduler(scheduler), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    record = {"command": " ".join([COMMAND, *sys.argv[1:]]), "seed": seed, "scenes": scenes, "steps": steps,
              "vae_steps": vae_steps, "batch": batch, "lr": lr, "vae_lr": vae_lr, "kl_weight": kl_weight,
              "caption_dropout": caption_dropout, "prediction_type": prediction_type, "ema_decay": ema_decay,
              "vae_reconstruction_mse": reconstruction, "vae_scaling_factor": vae.config.scaling_factor,
              "judge_on_vae_reconstructions": vae_judge,
              "final_loss": sum(losses[-200:]) / len(losses[-200:]),
              "parameters": {name: sum(p.numel() for p in m.parameters())
                             for name, m in (("unet", unet), ("text_encoder", text_encoder), ("vae", vae))},
              "vae_wall_time_s": round(vae_time, 1), "wall_time_s": round(time.time() - start, 1),
              "torch_threads": torch.get_num_threads(), "device": "cpu"}
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
    sd = sub.add_parser("sd", help="train the text-to-image model (StableDiffusionPipeline)")
    sd.add_argument("--out", type=Path, required=True)
    sd.add_argument("--steps", type=int, default=20000)
    sd.add_argument("--vae-steps", type=int, default=3000)
    sd.add_argument("--scenes", type=int, default=20000)
    sd.add_argument("--batch", type=int, default=64)
    sd.add_argument("--lr", type=float, default=1e-3)
    sd.add_argument("--caption-dropout", type=float, default=0.1)
    sd.add_argument("--prediction-type", default="v_prediction", choices=["epsilon", "v_prediction"])
    sd.add_argument("--seed", type=int, default=0)
    sd.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "judge":
        record = train_judge(args.out, steps=args.steps, batch=args.batch, seed=args.seed)
    else:
        record = train_text_to_image(args.out, steps=args.steps, vae_steps=args.vae_steps, scenes=args.scenes,
                                     batch=args.batch, lr=args.lr, caption_dropout=args.caption_dropout,
                                     prediction_type=args.prediction_type, seed=args.seed)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
