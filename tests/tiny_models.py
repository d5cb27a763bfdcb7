"""Tiny, randomly initialised open_clip and diffusers models built locally (no download)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TINY_CLIP = "clipfed-tiny-clip"


def register_tiny_clip(folder: Path) -> str:
    """Register a ~1.6M-parameter open_clip config under ``TINY_CLIP`` and return its name."""
    import open_clip

    path = folder / f"{TINY_CLIP}.json"
    path.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(path)
    return TINY_CLIP


def write_tiny_clip_checkpoint(path: Path, seed: int = 7) -> Path:
    """A checkpoint file of the tiny model, written the way a user would save one."""
    import open_clip

    torch.manual_seed(seed)
    torch.save(open_clip.create_model(TINY_CLIP, pretrained=None).state_dict(), path)
    return path


def tiny_clip_tokenizer(folder: Path) -> Any:
    """A CLIP BPE tokenizer over single letters (no download): vocab.json and merges.txt by hand."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for i, char in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[char], vocab[f"{char}</w>"] = 3 + i, 40 + i
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!",
                         model_max_length=77)


def write_tiny_clipseg(folder: Path) -> Path:
    """A random-init CLIPSeg (model and processor) saved like a hub checkpoint, for offline tests."""
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    config = CLIPSegConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
                     "vocab_size": 100, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
                       "image_size": 64, "patch_size": 16},
        projection_dim=16, reduce_dim=8, extract_layers=[1], decoder_num_attention_heads=2,
        decoder_intermediate_size=16)
    model = CLIPSegForImageSegmentation(config)
    processor = CLIPSegProcessor(
        image_processor=ViTImageProcessor(size={"height": 64, "width": 64}, do_resize=True),
        tokenizer=tiny_clip_tokenizer(folder))
    target = folder / "clipseg"
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def write_tiny_diffusers_pipeline(folder: Path) -> Path:
    """A tiny Stable-Diffusion-style pipeline, saved with save_pretrained like a real one."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        latent_channels=4, norm_num_groups=4, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=16, intermediate_size=32,
        num_attention_heads=2, num_hidden_layers=1, vocab_size=100, max_position_embeddings=77))
    tokenizer = tiny_clip_tokenizer(folder)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    target = folder / "pipeline"
    pipe.save_pretrained(target)
    return target
