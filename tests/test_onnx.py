"""ONNX export: the transformers.js layout and names, parity with PyTorch fp32 (<= 1e-4) through onnxruntime
with batch and sequence sizes other than the export's, the q8 twins, and no half-written folder on failure."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from modeling_georsclip import onnx_export
from modeling_georsclip.inference import load_model
from modeling_georsclip.onnx_export import OnnxEmbedder, export_onnx
from modeling_georsclip.testing import save_tiny_clip

CAPTIONS = ["many yellow buses are parked in rows on the gray parking lot.", "an airport", "a harbor with boats"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model_dir = save_tiny_clip(tmp_path_factory.mktemp("onnx") / "tiny", image_size=64, patch_size=16)
    files = export_onnx(model_dir)
    model, processor = load_model(model_dir, "cpu", "fp32")
    return model_dir, files, model, processor


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_layout_and_names_transformers_js_reads(exported):
    model_dir, files, _, _ = exported
    names = sorted(p.name for p in (model_dir / "onnx").iterdir())
    assert names == sorted(f"{stem}{q}.onnx" for stem in ("model", "text_model", "vision_model")
                           for q in ("", "_quantized"))
    expected = {
        "vision_model.onnx": (["pixel_values"], ["image_embeds"]),
        "text_model.onnx": (["input_ids", "attention_mask"], ["text_embeds"]),
        "model.onnx": (["input_ids", "pixel_values", "attention_mask"],
                       ["logits_per_image", "logits_per_text", "text_embeds", "image_embeds"]),
    }
    for name, (inputs, outputs) in expected.items():
        sess = session(model_dir / "onnx" / name)
        assert [i.name for i in sess.get_inputs()] == inputs and [o.name for o in sess.get_outputs()] == outputs
        assert all(isinstance(i.shape[0], str) for i in sess.get_inputs())  # dynamic batch axis
    image_settings = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert image_settings["crop_size"] == {"height": 64, "width": 64} and "image_mean" in image_settings


def test_parity_with_pytorch_fp32(exported):
    model_dir, _, model, processor = exported
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    enc = processor(text=CAPTIONS, return_tensors="pt")
    assert enc["input_ids"].shape[1] != 5 and enc["attention_mask"].min() == 0  # not the export's shape
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        ref_txt = model.get_text_features(**enc).pooler_output.numpy()
        ref_logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                           pixel_values=pixels[:2]).logits_per_image.numpy()
    feed_txt = {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()}
    (img,) = session(model_dir / "onnx" / "vision_model.onnx").run(None, {"pixel_values": pixels.numpy()})
    (txt,) = session(model_dir / "onnx" / "text_model.onnx").run(None, feed_txt)
    logits = session(model_dir / "onnx" / "model.onnx").run(
        ["logits_per_image"], {**feed_txt, "pixel_values": pixels[:2].numpy()})[0]
    assert img.shape == (3, model.config.projection_dim) and logits.shape == (2, 3)
    assert np.abs(img - ref_img).max() <= 1e-4
    assert np.abs(txt - ref_txt).max() <= 1e-4
    assert np.abs(logits - ref_logits).max() <= 1e-4 * max(1.0, float(model.logit_scale.detach().exp()))


def test_onnx_embedder_and_q8_twins(exported):
    model_dir, _, model, processor = exported
    pixels = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref_img, ref_txt = model.image_embeddings(pixels), model.text_embeddings(CAPTIONS, processor)
    onnx = OnnxEmbedder(model_dir / "onnx")
    img, txt = onnx.image_embeddings(pixels, batch_size=2), onnx.text_embeddings(CAPTIONS, processor)
    assert (img * ref_img).sum(-1).min() > 1 - 1e-6 and (txt * ref_txt).sum(-1).min() > 1 - 1e-6
    q8 = OnnxEmbedder(model_dir / "onnx", quantized=True)
    cos = torch.cat([(q8.image_embeddings(pixels) * ref_img).sum(-1), (q8.text_embeddings(CAPTIONS, processor)
                                                                       * ref_txt).sum(-1)])
    assert 0.95 < cos.min() < 1 - 1e-6  # quantized: close, and really different from fp32


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model_dir = save_tiny_clip(tmp_path / "tiny")

    def broken(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(onnx_export.torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(model_dir, quantize=False)
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith((".onnx", "onnx"))) == []


def test_cli_bad_model_is_one_error_line(tmp_path, capsys):
    assert onnx_export.main(["--model", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: model folder not found: {tmp_path / 'missing'}"
