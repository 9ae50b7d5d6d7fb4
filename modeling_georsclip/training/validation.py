"""Retrieval recall on a held-out source during training, embedded through the model's own embedding API."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..metrics import retrieval_recall
from .peft_utils import clip_core
from .stream import DataError, SourceSpec, decode_pair, source_rows


class ValidationSet:
    """Image-caption pairs for retrieval recall: unique images, captions with the index of their image."""

    def __init__(self, source: Any, processor, max_samples: int):
        images: dict[str, int] = {}
        pixels, captions, owners = [], [], []
        for row in source_rows(source):
            if len(captions) >= max_samples:
                break
            raw = row["image"]
            ident = raw.get("path") or hashlib.sha1(raw.get("bytes") or b"").hexdigest()
            img, caption, kind = decode_pair(raw, row["caption"], None)
            if kind is not None:
                continue
            if ident not in images:
                images[ident] = len(images)
                pixels.append(processor.image_processor(img, return_tensors="pt")["pixel_values"][0])
            captions.append(caption)
            owners.append(images[ident])
        if not captions:
            raise DataError(f"validation data {SourceSpec.from_any(source).path} holds no readable pairs")
        self.pixel_values = torch.stack(pixels)
        self.captions, self.text_to_image = captions, owners
        self.tokenizer = processor.tokenizer

    def evaluate(self, model, batch_size: int = 64) -> dict[str, float]:
        """Recall@K both ways. Under FSDP every process must call this (the forward gathers shards)."""
        core = clip_core(model)
        was_training = model.training
        model.eval()  # PEFT dropout off
        img = core.image_embeddings(self.pixel_values, batch_size=batch_size)
        txt = core.text_embeddings(self.captions, self.tokenizer, batch_size=batch_size)
        model.train(was_training)
        return retrieval_recall(txt @ img.t(), self.text_to_image)
