"""Tiny random CLIP models for tests, benchmarks and the embedded demo (no download, seconds on a CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import CLIPConfig

from .convert import clip_config_from_arch
from .modeling import GeoRSCLIPModel
from .processing import GeoRSCLIPProcessor


def tiny_clip_config(
    hidden_act: str = "quick_gelu", image_size: int = 32, patch_size: int = 8, width: int = 32, layers: int = 2
) -> CLIPConfig:
    """A CLIP config with the real 49,408-token vocabulary and context 77, but tiny towers."""
    if hidden_act not in ("quick_gelu", "gelu"):
        raise ValueError(f"hidden_act must be quick_gelu or gelu (what open_clip archs have), got {hidden_act!r}")
    arch = tiny_open_clip_config(hidden_act == "quick_gelu", image_size, patch_size, width, layers=layers,
                                 embed_dim=width)
    return clip_config_from_arch(arch)


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


def tiny_open_clip_config(quick_gelu: bool = True, image_size: int = 32, patch_size: int = 8, width: int = 32,
                          layers: int = 2, embed_dim: int | None = None) -> dict:
    """An open_clip model config (the JSON format ``--arch`` accepts) for a tiny ViT CLIP (two heads a tower)."""
    return {
        "embed_dim": embed_dim or (24 if width == 32 else width),
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "head_width": width // 2,
                       "patch_size": patch_size},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": layers},
    }


def perturbed_open_clip(cfg: dict, seed: int = 0):
    """An open_clip ``CLIP`` with every parameter moved off its initial value (so a swapped mapping shows).

    Needs open_clip (the ``parity`` extra).
    """
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        model.logit_scale.fill_(3.1)
    return model


def write_open_clip_checkpoint(folder: str | os.PathLike, seed: int = 0, **config_kwargs) -> tuple[Path, Path]:
    """Write a deterministic tiny open_clip checkpoint (raw state dict ``.pt``) and its arch JSON.

    Returns ``(checkpoint_path, arch_json_path)``: the inputs of ``python -m modeling_georsclip.convert``.
    """
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_open_clip_config(**config_kwargs)
    model = perturbed_open_clip(cfg, seed)
    checkpoint, arch = folder / "open_clip_tiny.pt", folder / "open_clip_tiny.json"
    torch.save(model.state_dict(), checkpoint)
    arch.write_text(json.dumps(cfg, indent=2))
    return checkpoint, arch
