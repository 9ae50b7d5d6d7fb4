"""Tiny random CLIP models for tests, benchmarks and the embedded demo (no download, seconds on a CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import CLIPConfig

from .modeling import GeoRSCLIPModel
from .processing import GeoRSCLIPProcessor


def tiny_clip_config(
    hidden_act: str = "quick_gelu", image_size: int = 32, patch_size: int = 8, width: int = 32, layers: int = 2
) -> CLIPConfig:
    """A CLIP config with the real 49,408-token vocabulary and context 77, but tiny towers."""
    text = dict(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=77, hidden_act=hidden_act,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    vision = dict(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size, hidden_act=hidden_act,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=width)


def tiny_clip(seed: int = 0, **config_kwargs) -> GeoRSCLIPModel:
    """A seeded random tiny GeoRSCLIPModel in eval mode."""
    torch.manual_seed(seed)
    return GeoRSCLIPModel(tiny_clip_config(**config_kwargs)).eval()


def save_tiny_clip(path: str | os.PathLike, seed: int = 0, **config_kwargs) -> Path:
    """Write a tiny plain-CLIP checkpoint folder (weights + processor) and return its path."""
    model = tiny_clip(seed, **config_kwargs)
    model.save_pretrained(path)
    GeoRSCLIPProcessor.default(image_size=model.config.vision_config.image_size).save_pretrained(path)
    return Path(path)
