"""Image-text retrieval recall@k in bounded memory (the clip_benchmark ``recall_at_k > 0`` convention).

clip_benchmark builds the full (n_texts, n_images) score matrix, a same-sized boolean positive-pair matrix
and a (batch, k, n_images) one-hot tensor per batch: 50k images x 250k captions would need ~60 GB for the
scores alone. The counts below give the same hits from one row chunk at a time:

- text -> image: caption ``t`` hits at k when fewer than k images score strictly higher than its own image;
- image -> text: image ``j`` hits at k when fewer than k captions score strictly higher than its best
  caption (the best caption is the first of its captions to appear in the ranking).

With continuous scores this is exactly what ``torch.topk`` + "any positive in the top k" gives. With exact
ties between a positive and a negative at the k-th place (duplicate images in RSICD give such ties),
``torch.topk`` picks one in an order that depends on the device and row length, so clip_benchmark's number
is not reproducible there. Here ``ties="optimistic"`` (default: the positive wins) or ``"pessimistic"``
(the negatives win) makes the metric deterministic; clip_benchmark always lies between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# Elements per similarity chunk: 2**24 float32 scores (64 MiB) plus a boolean mask of a quarter of that.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


class EmbeddingSimilarity:
    """A lazy (n_texts, n_images) cosine-similarity matrix: rows are computed only when sliced.

    ``retrieval_recall(EmbeddingSimilarity(text_embeds, image_embeds), text_to_image)`` never holds more
    than one chunk of scores, so it scales to any number of captions that fit as embeddings.
    """

    def __init__(self, text_embeds: Any, image_embeds: Any):
        self.text_embeds = torch.as_tensor(text_embeds)
        self.image_embeds = torch.as_tensor(image_embeds)
        if self.text_embeds.ndim != 2 or self.image_embeds.ndim != 2:
            raise ValueError("EmbeddingSimilarity needs 2-D text and image embeddings")
        if self.text_embeds.shape[1] != self.image_embeds.shape[1]:
            raise ValueError(
                f"embedding sizes differ: texts {self.text_embeds.shape[1]}, images {self.image_embeds.shape[1]}"
            )
        self.shape = (self.text_embeds.shape[0], self.image_embeds.shape[0])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> torch.Tensor:
        if not isinstance(rows, slice):
            raise TypeError("EmbeddingSimilarity supports row slices only")
        return self.text_embeds[rows] @ self.image_embeds.T


def _row_chunks(n_rows: int, n_cols: int, chunk_elements: int):
    step = max(1, chunk_elements // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def _chunk(similarity: Any, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` as a tensor, without copying when the source is a tensor or numpy array."""
    block = similarity[start:stop]
    return torch.as_tensor(np.asarray(block) if not isinstance(block, torch.Tensor) else block)


def retrieval_recall(
    similarity: Any,
    text_to_image: Sequence[int] | np.ndarray | torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ties: str = "optimistic",
) -> dict[str, float]:
    """Recall@k in percent for image->text (``i2t_R@k``), text->image (``t2i_R@k``) and their mean ``mR``.

    ``similarity``: (n_texts, n_images) scores — a torch tensor, a numpy array (``np.memmap`` works), an
    :class:`EmbeddingSimilarity`, or anything with ``.shape`` whose row slices give arrays. It is read one
    row chunk (about ``chunk_elements`` scores) at a time, twice, and never copied whole.
    ``text_to_image[t]``: index of the image caption ``t`` describes; an image may have several captions.
    An image without captions counts as a miss (as in clip_benchmark). ``k`` larger than the gallery
    counts every query as a hit. ``ties``: see the module docstring.
    """
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")
    beats = torch.gt if ties == "optimistic" else torch.ge
    n_texts, n_images = (int(s) for s in similarity.shape)
    owner = torch.as_tensor(np.asarray(text_to_image), dtype=torch.long).reshape(-1)
    if owner.numel() != n_texts:
        raise ValueError(f"text_to_image has {owner.numel()} entries but similarity has {n_texts} rows (texts)")
    if n_texts == 0 or n_images == 0:
        raise ValueError("retrieval_recall needs at least one text and one image")
    if owner.min() < 0 or owner.max() >= n_images:
        raise ValueError(f"text_to_image holds image indices outside 0..{n_images - 1}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")

    # Pass 1: each caption's own score, and how many images beat it (text -> image rank).
    positive = torch.empty(n_texts, dtype=torch.float64)
    text_rank = torch.empty(n_texts, dtype=torch.long)
    for start, stop in _row_chunks(n_texts, n_images, chunk_elements):
        block = _chunk(similarity, start, stop)
        own = block.gather(1, owner[start:stop, None].to(block.device))
        # pessimistic: ">=" also counts the caption's own image, hence the -1 below
        text_rank[start:stop] = beats(block, own).sum(dim=1).cpu()
        positive[start:stop] = own[:, 0].double().cpu()

    # Best caption score per image; images without captions keep +inf (never a hit).
    best = torch.full((n_images,), float("inf"), dtype=torch.float64)
    best.scatter_reduce_(0, owner, positive, reduce="amax", include_self=False)

    # Pass 2: how many captions beat each image's best caption (image -> text rank).
    image_rank = torch.zeros(n_images, dtype=torch.long)
    for start, stop in _row_chunks(n_texts, n_images, chunk_elements):
        block = _chunk(similarity, start, stop)
        image_rank += beats(block, best.to(block.dtype).to(block.device)[None, :]).sum(dim=0).cpu()
    if ties == "pessimistic":
        text_rank -= 1
        # captions of the image tied with its best one are positives, not competitors
        tied_positives = torch.zeros(n_images, dtype=torch.long)
        tied_positives.scatter_add_(0, owner, (positive == best[owner]).long())
        image_rank -= tied_positives
    image_rank[torch.isinf(best)] = torch.iinfo(torch.long).max  # no caption: a miss for every k

    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"i2t_R@{k}"] = 100.0 * (image_rank < k).double().mean().item()
    for k in ks:
        metrics[f"t2i_R@{k}"] = 100.0 * (text_rank < k).double().mean().item()
    metrics["mR"] = float(np.mean(list(metrics.values())))
    return metrics
