"""Shared pieces of the evaluation tasks: model loading, sharding across processes, batched embedding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..log import get_logger
from ..modeling import GeoRSCLIPModel
from ..processing import GeoRSCLIPProcessor
from .datasets import decode_images

logger = get_logger(__name__)


def is_main_process(accelerator: Any | None) -> bool:
    return accelerator is None or accelerator.is_main_process


def shard(n_items: int, accelerator: Any | None) -> range:
    """Indices this process handles: every ``world``-th item from its rank (all of them without accelerate)."""
    if accelerator is None or accelerator.num_processes == 1:
        return range(n_items)
    return range(accelerator.process_index, n_items, accelerator.num_processes)


def gather(items: list, accelerator: Any | None) -> list:
    """Concatenate per-process lists of picklable items on every process."""
    if accelerator is None or accelerator.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return list(gather_object(items))


@torch.no_grad()
def embed_images(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    paths: Sequence[Path],
    batch_size: int = 64,
    accelerator: Any | None = None,
    desc: str = "images",
) -> tuple[torch.Tensor, list[int], list[str]]:
    """Unit-norm embeddings of the readable images among ``paths``, computed shard by shard and gathered.

    Returns ``(embeds (n_readable, D), indices into paths of those rows, messages for skipped files)``.
    """
    mine = list(shard(len(paths), accelerator))
    rows: list[tuple[int, torch.Tensor]] = []
    errors: list[str] = []
    disable = not is_main_process(accelerator)
    for start in tqdm(range(0, len(mine), batch_size), desc=desc, unit="batch", disable=disable):
        batch = mine[start : start + batch_size]
        images, kept, failed = decode_images([paths[i] for i in batch])
        errors += failed
        if not images:
            continue
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        feats = model.image_embeddings(pixels, batch_size=len(images))
        rows += [(batch[k], feats[j]) for j, k in enumerate(kept)]
    rows = sorted(gather(rows, accelerator), key=lambda row: row[0])
    errors = gather(errors, accelerator)
    if not rows:
        return torch.empty(0, model.config.projection_dim), [], errors
    return torch.stack([r[1] for r in rows]), [r[0] for r in rows], errors
