"""A LoRA run saves an adapter and a merged plain CLIP folder that stock transformers and the pipeline load."""

import json

import torch
from PIL import Image
from transformers import CLIPModel, pipeline

from modeling_georsclip.resources import resolve_config
from modeling_georsclip.training import TrainConfig, train
from modeling_georsclip.training.peft_utils import load_peft_logit_scale

from conftest import SAMPLES

IMAGE = SAMPLES / "images" / "cliprsicd__stadium_1.jpg"


def test_lora_run_saves_adapter_and_merged_clip(tmp_path):
    cfg = TrainConfig.load(resolve_config("tiny_cpu"), [
        "--output_dir", str(tmp_path), "--peft", "lora", "--peft_r", "4", "--max_steps", "3", "--lr", "5e-2",
        "--num_workers", "0", "--checkpoint_every", "0", "--report_to", "none", "--val_data", "null"])
    final = train(cfg)
    adapter = final / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "logit_scale.safetensors").exists()

    merged = CLIPModel.from_pretrained(final).eval()
    assert json.loads((final / "config.json").read_text())["architectures"] == ["CLIPModel"]
    # The merged weights equal base + adapter: rebuild the base and apply the saved adapter with peft.
    from peft import PeftModel

    from modeling_georsclip.testing import tiny_clip

    base = tiny_clip(seed=cfg.seed, image_size=cfg.tiny_image_size)
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    load_peft_logit_scale(with_adapter.base_model.model, adapter)
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[49406, 320, 1125, 49407], [49406, 2867, 3360, 49407]])
    with torch.no_grad():
        a = merged(pixel_values=pixels, input_ids=ids).logits_per_image
        b = with_adapter(pixel_values=pixels, input_ids=ids).logits_per_image
        untrained = tiny_clip(seed=cfg.seed, image_size=32)(pixel_values=pixels, input_ids=ids).logits_per_image
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a, untrained, atol=1e-4)  # the adapter changed something

    classify = pipeline("zero-shot-image-classification", model=str(final))
    scores = classify(Image.open(IMAGE), candidate_labels=["stadium", "forest", "harbor"])
    assert sorted(s["label"] for s in scores) == ["forest", "harbor", "stadium"]
    assert abs(sum(s["score"] for s in scores) - 1) < 1e-4
