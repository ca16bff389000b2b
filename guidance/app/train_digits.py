"""Train the bundled digits models: the class-conditional diffusion model (with label dropout, or without for the
twin) and the evaluation classifier. Runs offline on a CPU; each run writes its command and settings to the
model folder's training.json. The shipped models were made with

    python -m guidance.app.train_digits train --out pipelines/models/digits --steps 5000 --label-dropout 0.15
    python -m guidance.app.train_digits train --out pipelines/models/digits-no-dropout --steps 5000 --label-dropout 0
    python -m guidance.app.train_digits classifier --out pipelines/models/digit-classifier
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from safetensors.torch import save_file

from ..pipelines.class_conditional import ClassConditionalPipeline
from ..pipelines.digits import CLASSIFIER, DEFAULT_MODEL, NUM_CLASSES, SIZE, DigitClassifier, load_digit_images

COMMAND = "python -m guidance.app.train_digits"


def build_unet(width: int = 16, layers: int = 1) -> UNet2DModel:
    """A small pixel-space UNet (0.64 M parameters at width 16); class NUM_CLASSES is the null class."""
    return UNet2DModel(
        sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(width, 2 * width, 4 * width),
        layers_per_block=layers, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=8, num_class_embeds=NUM_CLASSES + 1,
    )


def noise_scheduler(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                         clip_sample=False)


def sampling_scheduler(train_scheduler: DDPMScheduler) -> DDIMScheduler:
    """Deterministic DDIM with 'leading' spacing (the cosine schedule's last ᾱ ≈ 0 breaks 'trailing')."""
    return DDIMScheduler.from_config(train_scheduler.config, timestep_spacing="leading", steps_offset=1,
                                     set_alpha_to_one=False, clip_sample=False)


def training_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to predict: ε, or v = ᾱ_t^½ ε − (1 − ᾱ_t)^½ x0 (Salimans & Ho, ICLR 2022)."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    return scheduler.get_velocity(x0, noise, t)


def cosine_warmup(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))


def train(out: Path, steps: int, label_dropout: float, seed: int = 0, batch: int = 64, lr: float = 2e-3,
          width: int = 16, layers: int = 1, prediction_type: str = "v_prediction", dequantize: float = 0.02,
          ema_decay: float = 0.999, log_every: int = 250) -> dict[str, Any]:
    """Train the class-conditional model and save it as a ClassConditionalPipeline (safetensors)."""
    torch.manual_seed(seed)
    images, labels = load_digit_images("train")
    unet = build_unet(width, layers)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = noise_scheduler(prediction_type)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    schedule = cosine_warmup(optimizer, steps, warmup=100)
    generator = torch.Generator().manual_seed(seed)
    start, losses = time.time(), []
    for step in range(steps):
        index = torch.randint(0, len(labels), (batch,), generator=generator)
        x0 = images[index] + dequantize * torch.randn(images[index].shape, generator=generator)
        y = labels[index].clone()
        y[torch.rand(batch, generator=generator) < label_dropout] = NUM_CLASSES
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        prediction = unet(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = F.mse_loss(prediction, training_target(scheduler, x0, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    pipe = ClassConditionalPipeline(unet=ema.eval(), scheduler=sampling_scheduler(scheduler))
    pipe.save_pretrained(out, safe_serialization=True)
    record = {"command": " ".join([COMMAND, *sys.argv[1:]]), "seed": seed,
              "steps": steps, "batch": batch, "lr": lr, "width": width, "layers": layers,
              "label_dropout": label_dropout,
              "prediction_type": prediction_type, "dequantize": dequantize, "ema_decay": ema_decay,
              "wall_time_s": round(time.time() - start, 1), "final_loss": sum(losses[-200:]) / len(losses[-200:]),
              "parameters": sum(p.numel() for p in unet.parameters()), "torch_threads": torch.get_num_threads()}
    (Path(out) / "training.json").write_text(json.dumps(record, indent=1))
    return record


def train_classifier(out: Path, epochs: int = 60, seed: int = 1) -> dict[str, Any]:
    """Train the evaluation classifier on the train split (small shifts as augmentation); report held-out accuracy."""
    torch.manual_seed(seed)
    images, labels = load_digit_images("train")
    test_images, test_labels = load_digit_images("test")
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for _ in range(epochs):
        for index in torch.randperm(len(labels), generator=generator).split(64):
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            x = torch.roll(images[index], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out / "model.safetensors")
    record = {"command": " ".join([COMMAND, *sys.argv[1:]]), "seed": seed,
              "epochs": epochs, "held_out_accuracy": accuracy, "wall_time_s": round(time.time() - start, 1)}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("train", help="train the class-conditional digits diffusion model")
    model.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    model.add_argument("--steps", type=int, default=5000)
    model.add_argument("--label-dropout", type=float, default=0.15)
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--batch", type=int, default=64)
    model.add_argument("--lr", type=float, default=2e-3)
    model.add_argument("--width", type=int, default=16)
    model.add_argument("--layers", type=int, default=1)
    model.add_argument("--prediction-type", default="v_prediction", choices=["epsilon", "v_prediction"])
    model.add_argument("--threads", type=int, default=1)
    classifier = sub.add_parser("classifier", help="train the evaluation digit classifier")
    classifier.add_argument("--out", type=Path, default=CLASSIFIER)
    classifier.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)
    if args.command == "train":
        torch.set_num_threads(args.threads)
        print(json.dumps(train(args.out, args.steps, args.label_dropout, seed=args.seed, batch=args.batch, lr=args.lr,
                               width=args.width, layers=args.layers, prediction_type=args.prediction_type), indent=1))
    else:
        print(json.dumps(train_classifier(args.out, epochs=args.epochs), indent=1))


if __name__ == "__main__":
    main()
