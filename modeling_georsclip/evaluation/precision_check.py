"""Fidelity guard for reduced precision: the run's own images and captions embedded again in fp32.

``evaluate --precision bf16 --check-precision N`` records, in the run record,
``"precision_check": {"n": N, "min_cosine": ..., "mean_cosine": ..., "top1_agreement": ...}``: cosines between
the reduced-precision and fp32 embeddings of up to N images and N captions of the run (zero-shot images first,
then retrieval images, then SeLo scene crops), and the share of zero-shot images whose top-1 class is the same
in both precisions (null when no zero-shot task ran). Embeddings, not SeLo's Rmi, are compared: on barely
trained models the min-max scaled heat map turns tiny embedding differences into large Rmi swings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..inference import load_model
from ..log import get_logger
from ..modeling import GeoRSCLIPModel
from ..processing import GeoRSCLIPProcessor
from .datasets import decode_images

logger = get_logger(__name__)

MIN_COSINE = 0.999  # below this a run's log says its precision changed the embeddings noticeably


@dataclass
class CheckSamples:
    """Up to ``n`` images and captions gathered from a run's datasets as they are loaded."""

    n: int
    images: list[Path | Image.Image] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    zsc: tuple[list[Path], list[str], list[str]] | None = None  # (images, classnames, templates)

    def add(self, images: Sequence[Path | Image.Image] = (), captions: Sequence[str] = ()) -> None:
        self.images += list(images)[: max(self.n - len(self.images), 0)]
        self.captions += list(captions)[: max(self.n - len(self.captions), 0)]

    def add_zero_shot(self, images: Sequence[Path], classnames: Sequence[str], templates: Sequence[str]) -> None:
        """The first zero-shot dataset also gives the top-1 agreement check."""
        if self.zsc is None:
            self.zsc = (list(images)[: self.n], list(classnames), list(templates))
        self.add(images)


@contextlib.contextmanager
def fp32_twin(model: GeoRSCLIPModel, model_id: str, device: torch.device | None) -> Iterator[GeoRSCLIPModel]:
    """The same model in fp32: autocast models switch autocast off meanwhile; int8 models load a fresh copy."""
    if model.inference_precision == "int8":
        reference, _ = load_model(model_id, device, "fp32")
        yield reference
        return
    saved = model.inference_precision
    model.inference_precision = "fp32"
    try:
        yield model
    finally:
        model.inference_precision = saved


def _embed(model: GeoRSCLIPModel, processor: GeoRSCLIPProcessor, images: list, batch_size: int) -> torch.Tensor:
    if not images:
        return torch.empty(0, model.config.projection_dim)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    return model.image_embeddings(pixels, batch_size=batch_size)


def _decoded(items: Sequence[Path | Image.Image]) -> list[Image.Image]:
    paths = [item for item in items if not isinstance(item, Image.Image)]
    decoded = iter(decode_images(paths)[0])
    return [item if isinstance(item, Image.Image) else next(decoded, None) for item in items]


def precision_check(
    model: GeoRSCLIPModel,
    model_id: str,
    processor: GeoRSCLIPProcessor,
    samples: CheckSamples,
    head_mode: str = "paper",
    batch_size: int = 64,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Compare ``model`` (reduced precision) with its fp32 twin on ``samples``; a run-record entry."""
    images = [im for im in _decoded(samples.images) if im is not None]
    zsc_images = [im for im in _decoded(samples.zsc[0]) if im is not None] if samples.zsc else []
    ours = {"images": _embed(model, processor, images, batch_size),
            "texts": model.text_embeddings(samples.captions, processor)}
    heads = {}
    if zsc_images:
        heads["ours"] = model.zero_shot_head(samples.zsc[1], samples.zsc[2], processor, mode=head_mode)
    with fp32_twin(model, model_id, device) as reference:
        ref = {"images": _embed(reference, processor, images, batch_size),
               "texts": reference.text_embeddings(samples.captions, processor)}
        if zsc_images:
            heads["fp32"] = reference.zero_shot_head(samples.zsc[1], samples.zsc[2], processor, mode=head_mode)
    cosines = {key: (ours[key] * ref[key]).sum(dim=-1) for key in ours}
    both = torch.cat(list(cosines.values()))
    result: dict[str, Any] = {
        "n": samples.n,
        "precision": model.inference_precision,
        "n_images": len(images),
        "n_captions": len(samples.captions),
        "min_cosine": float(both.min()) if len(both) else None,
        "mean_cosine": float(both.mean()) if len(both) else None,
        "min_cosine_images": float(cosines["images"].min()) if len(images) else None,
        "min_cosine_texts": float(cosines["texts"].min()) if samples.captions else None,
        "top1_agreement": None,
    }
    if zsc_images:
        ours_zsc = _embed(model, processor, zsc_images, batch_size)
        with fp32_twin(model, model_id, device) as reference:
            ref_zsc = _embed(reference, processor, zsc_images, batch_size)
        agree = (ours_zsc @ heads["ours"]).argmax(dim=-1) == (ref_zsc @ heads["fp32"]).argmax(dim=-1)
        result["top1_agreement"] = float(agree.float().mean())
    if result["min_cosine"] is not None and result["min_cosine"] < MIN_COSINE:
        logger.warning("precision check: %s embeddings reach only min cosine %.5f to fp32 (< %.3f) on %d images "
                       "and %d captions", model.inference_precision, result["min_cosine"], MIN_COSINE,
                       len(images), len(samples.captions))
    else:
        logger.info("precision check: %s vs fp32 min cosine %s, mean %s, top-1 agreement %s",
                    model.inference_precision, result["min_cosine"], result["mean_cosine"], result["top1_agreement"])
    return result
