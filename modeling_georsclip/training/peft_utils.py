"""Tower locking and PEFT (LoRA, DoRA, IA3 via ``peft``) for CLIP, and saving PEFT runs as plain CLIP."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

LOGIT_SCALE_FILE = "logit_scale.safetensors"


def lock_tower(model: CLIPModel, tower: str, unlocked_layers: int = 0) -> None:
    """Freeze ``tower`` ("vision" or "text") except its last ``unlocked_layers`` blocks (+ final norm, projection).

    ``unlocked_layers=0`` freezes the whole tower including its projection (open_clip's ``lock_image``).
    """
    if tower == "vision":
        body, projection, final_norm = model.vision_model, model.visual_projection, model.vision_model.post_layernorm
    else:
        body, projection, final_norm = model.text_model, model.text_projection, model.text_model.final_layer_norm
    for param in [*body.parameters(), *projection.parameters()]:
        param.requires_grad_(False)
    if unlocked_layers > 0:
        layers = body.encoder.layers
        if unlocked_layers > len(layers):
            raise ValueError(f"lock_{tower}_unlocked_layers={unlocked_layers} but the tower has {len(layers)} blocks")
        for module in [*layers[-unlocked_layers:], final_norm, projection]:
            for param in module.parameters():
                param.requires_grad_(True)


def apply_peft(model: CLIPModel, method: str, r: int, alpha: int, dropout: float, towers, targets, train_logit_scale):
    """Wrap ``model`` with a peft adapter on the chosen towers' linear layers.

    The logit scale is a bare ``nn.Parameter``: peft's ``modules_to_save`` ignores parameters, so it is re-enabled
    by hand here and saved next to the adapter by ``save_peft_outputs``.
    """
    from peft import IA3Config, LoraConfig, get_peft_model

    prefixes = {"vision": "vision_model", "text": "text_model"}
    tower_re = "|".join(prefixes[t] for t in towers)
    target_re = "|".join(targets)
    target_modules = rf".*({tower_re})\..*\.({target_re})"
    if method in ("lora", "dora"):
        config = LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, use_dora=method == "dora"
        )
    else:
        ff = [t for t in targets if t in ("fc1", "fc2")]
        config = IA3Config(target_modules=target_modules, feedforward_modules=rf".*({tower_re})\..*\.({'|'.join(ff)})"
                           if ff else [])
    peft_model = get_peft_model(model, config)
    if train_logit_scale:
        peft_model.base_model.model.logit_scale.requires_grad_(True)
    return peft_model


def save_peft_outputs(peft_model, adapter_dir: str | os.PathLike) -> None:
    """Save the adapter (peft format) plus the trained logit scale beside it."""
    peft_model.save_pretrained(adapter_dir)
    scale = peft_model.base_model.model.logit_scale.detach().cpu().clone()
    save_file({"logit_scale": scale}, str(Path(adapter_dir) / LOGIT_SCALE_FILE))


def load_peft_logit_scale(model: CLIPModel, adapter_dir: str | os.PathLike) -> None:
    """Restore the logit scale saved by ``save_peft_outputs`` into a (merged or base) CLIP model."""
    path = Path(adapter_dir) / LOGIT_SCALE_FILE
    if path.exists():
        with torch.no_grad():
            model.logit_scale.copy_(load_file(str(path))["logit_scale"])


def merged_clip(peft_model) -> CLIPModel:
    """A plain CLIP model with the adapter merged into the weights (the peft model is consumed)."""
    return peft_model.merge_and_unload()


def clip_core(model) -> CLIPModel:
    """The CLIPModel inside a (possibly PEFT-wrapped) model: its methods run the adapter layers too."""
    return model.base_model.model if hasattr(model, "peft_config") else model
