"""Symmetric InfoNCE (CLIP loss) over the *global* batch: features are gathered across processes with gradients.

``accelerator.gather`` returns tensors without ``grad_fn``, and transformers' ``CLIPModel`` loss only sees the local
batch, so a naive multi-GPU loop trains with a per-GPU contrastive batch. Here the gather is
``torch.distributed.nn.functional.all_gather`` (autograd-aware: its backward sums the gradients each rank sends
back), as in open_clip's ``ClipLoss(gather_with_grad=True)``. With ``local_loss`` each rank scores only its own rows
against all columns (labels ``arange(B) + rank * B``): the same gradients as the full loss at 1/W of the logits
memory. Under DDP gradient averaging, W processes with batch b give exactly the gradients of 1 process with W*b.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

MAX_LOGIT_SCALE = 100.0


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate ``features`` (B, D) from every process in rank order; differentiable when ``with_grad``."""
    rank, world = _world()
    if world == 1:
        return features
    if with_grad:
        import warnings

        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(all_gather(features), dim=0)
    gathered = [torch.empty_like(features) for _ in range(world)]
    dist.all_gather(gathered, features)
    gathered[rank] = features  # keep the local gradient path (open_clip's default)
    return torch.cat(gathered, dim=0)


def clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    gather_with_grad: bool = True,
    local_loss: bool = True,
) -> torch.Tensor:
    """Symmetric cross-entropy of L2-normalised embeddings; ``logit_scale`` is the log of the temperature inverse.

    ``local_loss=False`` computes the full (W*B)^2 logits on every rank. Without ``gather_with_grad`` the loss still
    sees the global batch but only the local rows carry gradient (gradients are then 1/W of the exact ones for the
    full loss, and biased for the local loss — see ecosystem notes §6).
    """
    rank, world = _world()
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    all_images = gather_features(image_embeds, gather_with_grad)
    all_texts = gather_features(text_embeds, gather_with_grad)
    if local_loss:
        logits_per_image = scale * image_embeds @ all_texts.t()
        logits_per_text = scale * text_embeds @ all_images.t()
        labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + rank * image_embeds.shape[0]
    else:
        logits_per_image = scale * all_images @ all_texts.t()
        logits_per_text = logits_per_image.t()
        labels = torch.arange(all_images.shape[0], device=image_embeds.device)
    return (F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels)) / 2


@torch.no_grad()
def clamp_logit_scale_(logit_scale: torch.nn.Parameter) -> None:
    """Keep the learnable temperature in [1, 100] after each optimizer step (open_clip/CLIP convention)."""
    logit_scale.clamp_(0, torch.log(torch.tensor(MAX_LOGIT_SCALE)).item())
