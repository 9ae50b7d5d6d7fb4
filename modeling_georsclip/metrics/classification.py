"""Top-k accuracy for zero-shot classification."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def accuracy(logits: Any, labels: Any, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent: ``{"top1": ..., "top5": ...}`` for (N, C) logits and N integer labels.

    A sample counts for top-k when its label is among the k highest logits (ties broken by
    ``torch.topk``, as open_clip and clip_benchmark do). ``k`` larger than C counts every sample.
    """
    scores = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
    target = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    if scores.ndim != 2 or scores.shape[0] != target.numel():
        raise ValueError(f"logits must be (N, C) with N = len(labels) = {target.numel()}, got {tuple(scores.shape)}")
    if target.numel() == 0:
        raise ValueError("accuracy needs at least one sample")
    if target.min() < 0 or target.max() >= scores.shape[1]:
        raise ValueError(f"labels must lie in 0..{scores.shape[1] - 1}")
    ranked = scores.topk(min(max(topk), scores.shape[1]), dim=1).indices
    hits = ranked == target[:, None]
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).double().mean().item() for k in topk}
