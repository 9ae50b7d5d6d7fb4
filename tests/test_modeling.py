"""GeoRSCLIPModel: plain-CLIP saving, batched embeddings, zero-shot head modes."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from transformers import AutoModel, CLIPModel

from modeling_georsclip import GeoRSCLIPModel, GeoRSCLIPProcessor
from modeling_georsclip.testing import tiny_clip

CLASSES = ["airport", "dense residential", "forest"]
TEMPLATES = ["a satellite image of {}.", "an aerial photo of the {}, seen from above, with many details.", "{}"]


def test_saved_folder_is_plain_clip(tiny_model_dir):
    folder = tiny_model_dir
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    auto = AutoModel.from_pretrained(folder)
    assert type(auto) is CLIPModel
    ours = GeoRSCLIPModel.from_pretrained(folder)
    for (name, a), (_, b) in zip(auto.state_dict().items(), ours.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_batched_embeddings_match_single_pass():
    model = tiny_clip(seed=1)
    processor = GeoRSCLIPProcessor.default(image_size=32)
    pixels = torch.randn(7, 3, 32, 32)
    texts = [f"{n} buildings next to a {c} road" for n in range(5) for c in ("grey", "long")]
    with torch.no_grad():
        img_ref = F.normalize(model(pixel_values=pixels, **processor(text=texts[:1], return_tensors="pt")).image_embeds, dim=-1)
        enc = processor(text=texts, return_tensors="pt")
        txt_ref = F.normalize(model.get_text_features(**enc).pooler_output, dim=-1)
    assert torch.allclose(model.image_embeddings(pixels, batch_size=3), img_ref, atol=1e-6)
    assert torch.allclose(model.text_embeddings(texts, processor, batch_size=4), txt_ref, atol=1e-6)


def test_zero_shot_head_modes_follow_their_definitions():
    model = tiny_clip(seed=2)
    processor = GeoRSCLIPProcessor.default(image_size=32)
    paper = model.zero_shot_head(CLASSES, TEMPLATES, processor, mode="paper")
    openclip = model.zero_shot_head(CLASSES, TEMPLATES, processor, mode="openclip")
    assert paper.shape == openclip.shape == (model.config.projection_dim, len(CLASSES))
    for column, name in enumerate(CLASSES):
        raw = model.text_embeddings([t.format(name) for t in TEMPLATES], processor, normalize=False)
        expected_paper = F.normalize(raw.mean(0), dim=-1)
        expected_openclip = F.normalize(F.normalize(raw, dim=-1).mean(0), dim=-1)
        assert torch.allclose(paper[:, column], expected_paper, atol=1e-6)
        assert torch.allclose(openclip[:, column], expected_openclip, atol=1e-6)
    # Different templates have different norms, so the two ensembles genuinely differ.
    assert not torch.allclose(paper, openclip, atol=1e-4)


def test_zero_shot_logits_use_the_logit_scale():
    model = tiny_clip(seed=3)
    processor = GeoRSCLIPProcessor.default(image_size=32)
    head = model.zero_shot_head(CLASSES, TEMPLATES[:1], processor)
    images = model.image_embeddings(torch.randn(4, 3, 32, 32))
    logits = model.zero_shot_logits(images, head)
    assert torch.allclose(logits, model.logit_scale.exp().item() * images @ head, atol=1e-5)
