"""GeoRSCLIPModel: a ``transformers.CLIPModel`` with remote-sensing conveniences.

The class adds no weights and no config type: whatever it saves is a plain CLIP checkpoint
(``model_type: clip``, ``architectures: ["CLIPModel"]``) that ``CLIPModel``, ``AutoModel`` and
``pipeline("zero-shot-image-classification")`` load without ``trust_remote_code``. That is what the Hub
inference widgets need; the extras below live in this library, not in the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import CLIPModel

HeadMode = Literal["paper", "openclip"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pooled(output) -> torch.Tensor:
    """Projected embedding from ``get_image_features``/``get_text_features`` in transformers 4 and 5.

    transformers 5 returns ``BaseModelOutputWithPooling`` (projection in ``pooler_output``); 4.x a tensor.
    """
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _batches(items: Sequence, batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


class GeoRSCLIPModel(CLIPModel):
    """CLIP for remote sensing: batched normalised embeddings and prompt-ensemble zero-shot heads.

    ``inference_precision`` (set by ``inference.prepare_for_inference``) is what the embedding methods run
    in: ``bf16``/``fp16`` under ``torch.autocast``; ``int8`` models are quantized copies; outputs stay fp32.
    """

    inference_precision: str = "fp32"

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """Save exactly like ``CLIPModel`` and record the architecture as ``CLIPModel``.

        transformers writes the subclass name into ``architectures``; Hub widgets and older tooling look
        that name up, so the saved folder must name the stock class.
        """
        result = super().save_pretrained(save_directory, *args, **kwargs)
        for weights in Path(save_directory).glob("*.safetensors"):
            weights.chmod(0o644)  # transformers 5 writes weights through a 0600 temp file
        config_path = Path(save_directory) / "config.json"
        config = json.loads(config_path.read_text())
        config["architectures"] = ["CLIPModel"]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return result

    # ------------------------------------------------------------------ embeddings
    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def precision_context(self):
        """The autocast context ``inference_precision`` asks for (a no-op for fp32 and int8)."""
        dtype = AUTOCAST_DTYPES.get(self.inference_precision)
        return torch.autocast(self._device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    @torch.no_grad()
    def image_embeddings(
        self,
        pixel_values: torch.Tensor,
        batch_size: int = 64,
        normalize: bool = True,
        progress: bool = False,
    ) -> torch.Tensor:
        """Embed a (N, 3, H, W) pixel tensor in batches; returns (N, D) float32 on CPU."""
        chunks = []
        batches = _batches(pixel_values, batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=-(-len(pixel_values) // batch_size), desc="images")
        device, dtype = self._device, next(self.parameters()).dtype
        for batch in batches:
            with self.precision_context():
                feats = pooled(self.get_image_features(pixel_values=batch.to(device, dtype)))
            chunks.append(feats.float().cpu())
        feats = torch.cat(chunks) if chunks else torch.empty(0, self.config.projection_dim)
        return F.normalize(feats, dim=-1) if normalize else feats

    @torch.no_grad()
    def text_embeddings(
        self,
        texts: Sequence[str],
        tokenizer: Callable,
        batch_size: int = 256,
        normalize: bool = True,
        progress: bool = False,
    ) -> torch.Tensor:
        """Embed captions with ``tokenizer`` (a tokenizer or GeoRSCLIPProcessor) in batches; (N, D) on CPU."""
        chunks = []
        batches = _batches(list(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=-(-len(texts) // batch_size), desc="texts")
        for batch in batches:
            enc = tokenizer(text=batch, padding=True, truncation=True, max_length=77, return_tensors="pt")
            with self.precision_context():
                feats = self.get_text_features(
                    input_ids=enc["input_ids"].to(self._device), attention_mask=enc["attention_mask"].to(self._device)
                )
            chunks.append(pooled(feats).float().cpu())
        feats = torch.cat(chunks) if chunks else torch.empty(0, self.config.projection_dim)
        return F.normalize(feats, dim=-1) if normalize else feats

    # ------------------------------------------------------------------ zero-shot
    @torch.no_grad()
    def zero_shot_head(
        self,
        classnames: Sequence[str],
        templates: Sequence[str],
        tokenizer: Callable,
        mode: HeadMode = "paper",
    ) -> torch.Tensor:
        """Return a (D, C) classifier: one unit-norm text embedding per class, ensembled over ``templates``.

        ``paper`` averages the raw (unnormalised) text embeddings over templates and normalises the mean —
        what the GeoRSCLIP evaluation does. ``openclip`` normalises each template embedding, averages,
        and renormalises — what open_clip / clip_benchmark do.
        """
        if mode not in ("paper", "openclip"):
            raise ValueError(f"unknown zero-shot head mode {mode!r}: use 'paper' or 'openclip'")
        if not classnames or not templates:
            raise ValueError("zero_shot_head needs at least one class name and one template")
        weights = []
        for name in classnames:
            prompts = [template.format(name) for template in templates]
            emb = self.text_embeddings(prompts, tokenizer, normalize=(mode == "openclip"))
            weights.append(F.normalize(emb.mean(dim=0), dim=-1))
        return torch.stack(weights, dim=1)

    @torch.no_grad()
    def zero_shot_logits(self, image_embeds: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits (N, C) of normalised image embeddings against a zero-shot head."""
        return self.logit_scale.exp().float().cpu() * image_embeds @ head
