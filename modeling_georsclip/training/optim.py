"""AdamW with open_clip's weight-decay convention, and the warmup + cosine schedule (transformers')."""

from __future__ import annotations

import torch
from transformers import get_cosine_schedule_with_warmup


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """open_clip's rule: no decay on gains/biases (1-D), norms, embeddings and the logit scale."""
    lowered = name.lower()
    return param.ndim < 2 or "norm" in lowered or "embedding" in lowered or "logit_scale" in lowered or "bias" in lowered


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.98), eps=1e-6):
    """AdamW over the trainable parameters, two groups: with and without weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    if not decay and not no_decay:
        raise ValueError("no trainable parameters: check lock_*/peft settings")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps)


def build_scheduler(optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup to ``lr`` then cosine decay to 0 at ``total_steps``."""
    return get_cosine_schedule_with_warmup(optimizer, min(warmup_steps, max(total_steps - 1, 0)), max(total_steps, 1))
