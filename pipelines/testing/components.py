"""What every tiny pipeline shares: the sizes, an in-memory CLIP tokenizer and text config, a small VAE, the SD-1.x
scheduler settings, random prompt embeddings, and the test state of a built pipeline."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, AutoencoderKLWan, DiffusionPipeline, WanTransformer3DModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTokenizer, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

TOKENIZER_MAX_LENGTH = 16
TEXT_DIM = 32  # hidden size of every tiny text encoder and of the embeddings fed to SD3/Flux/PixArt
TEXT_SEQ_LEN = 8  # token count of the embeddings returned by ``tiny_call_kwargs``
IMAGE_SIZE = 16  # pixels; every tiny VAE downsamples by 2, so latents are 8 x 8
NULL_CLASS = 1000  # DiT's null class id (``num_embeds_ada_norm``)

LATENT_SIZE = IMAGE_SIZE // 2
PROMPT_WORDS = ("cat", "dog", "owl", "fox", "cow", "bee", "elk", "ant")
# Stable Diffusion 1.x scheduler config (scaled-linear betas, "leading" spacing, no clipping), the base
# of every tiny diffusion (non-flow) pipeline's scheduler.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def tiny_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer built in memory (no merges: one token per character)."""
    alphabet = sorted(ByteLevel.alphabet())
    symbols = [*alphabet, *(s + "</w>" for s in alphabet), "<|startoftext|>", "<|endoftext|>"]
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENIZER_MAX_LENGTH)


def text_config(tokenizer: CLIPTokenizer, **overrides: Any) -> CLIPTextConfig:
    """A 2-layer CLIP text config whose special-token ids match ``tokenizer``."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )


def t5_text_encoder(tokenizer: CLIPTokenizer, multilingual: bool = False) -> T5EncoderModel | UMT5EncoderModel:
    """A 2-layer T5 encoder (UMT5 with `multilingual`, as Wan's) of width TEXT_DIM over ``tokenizer``'s ids."""
    config, model = (UMT5Config, UMT5EncoderModel) if multilingual else (T5Config, T5EncoderModel)
    return model(config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id)).eval()


def small_vae(**overrides: Any) -> AutoencoderKL:
    """A 2-level VAE (downsampling factor 2) with 4 latent channels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        **overrides,
    )


def wan_vae() -> AutoencoderKLWan:
    """The tiny Wan video VAE of diffusers' test suite (tests/pipelines/wan): 16 latent channels."""
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def wan_transformer(**overrides: Any) -> WanTransformer3DModel:
    """The tiny Wan transformer of diffusers' test suite (tests/pipelines/wan); `overrides` change its config."""
    config = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 16,
              "out_channels": 16, "text_dim": TEXT_DIM, "freq_dim": 256, "ffn_dim": 32, "num_layers": 2,
              "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 32}
    return WanTransformer3DModel(**{**config, **overrides})


def finish(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """Put the pipeline in its test state: eval mode, no progress bars."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(size: int = IMAGE_SIZE) -> dict[str, Any]:
    return {"height": size, "width": size, "output_type": "latent"}


def embeds(batch: int, rng: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, TEXT_SEQ_LEN, TEXT_DIM, generator=rng)


def masked_embedding_arguments(batch: int, rng: torch.Generator, scale: float, seed: int,
                               size: int = IMAGE_SIZE) -> dict[str, Any]:
    """Call arguments of the T5-style pipelines (PixArt, Sana): prompt and negative embeddings with attention masks."""
    mask = torch.ones(batch, TEXT_SEQ_LEN, dtype=torch.long)
    mask[:, TEXT_SEQ_LEN // 2 :] = 0  # padded tail, as a real T5 prompt would have
    return image(size) | {
        "prompt_embeds": embeds(batch, rng), "prompt_attention_mask": mask,
        "negative_prompt": None,  # the default "" would clash with negative_prompt_embeds
        "negative_prompt_embeds": embeds(batch, rng), "negative_prompt_attention_mask": mask.clone(),
        "guidance_scale": scale, "use_resolution_binning": False,
    }
