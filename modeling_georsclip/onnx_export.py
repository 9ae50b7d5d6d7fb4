"""ONNX export of a GeoRSCLIP/CLIP folder in the layout transformers.js reads, and an onnxruntime embedder.

    python -m modeling_georsclip.onnx_export --model DIR [--output DIR/onnx] [--no-quantize]

Writes, as the Xenova CLIP repos do (ONNX files in the model folder's ``onnx/`` subfolder, beside the
config, tokenizer and preprocessor files transformers.js also reads):

- ``vision_model.onnx``: ``pixel_values`` (batch, 3, H, W) -> ``image_embeds`` (batch, D), what
  ``CLIPVisionModelWithProjection`` loads by default;
- ``text_model.onnx``: ``input_ids``, ``attention_mask`` (batch, sequence) -> ``text_embeds``, what
  ``CLIPTextModelWithProjection`` loads;
- ``model.onnx``: ``input_ids``, ``pixel_values``, ``attention_mask`` -> ``logits_per_image``,
  ``logits_per_text``, ``text_embeds``, ``image_embeds``: the whole ``CLIPModel``, which the
  ``zero-shot-image-classification`` pipeline loads;
- ``preprocessor_config.json`` in the model folder when it lacks one (transformers.js reads the image
  settings there; transformers 5 keeps them in ``processor_config.json``);
- with quantization (default), ``*_quantized.onnx`` twins (onnxruntime dynamic int8 of MatMul weights), the
  files transformers.js picks for ``dtype: "q8"``.

Embeddings are projected but not normalised, like transformers' ``image_embeds``/``text_embeds`` of the
``*WithProjection`` models. Batch and sequence axes are dynamic. The exporter is TorchScript
(``dynamo=False``): the dynamo exporter needs ``onnxscript``, and ``optimum``'s exporter needs transformers < 5.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .inference import ModelLoadError, load_model
from .log import get_logger
from .modeling import GeoRSCLIPModel, pooled

logger = get_logger(__name__)

OPSET = 17
FILES = {"vision": "vision_model.onnx", "text": "text_model.onnx", "model": "model.onnx"}


class VisionTower(torch.nn.Module):
    """``pixel_values -> image_embeds`` (projected, not normalised)."""

    def __init__(self, model: GeoRSCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pooled(self.model.get_image_features(pixel_values=pixel_values))


class TextTower(torch.nn.Module):
    """``input_ids, attention_mask -> text_embeds`` (projected, not normalised)."""

    def __init__(self, model: GeoRSCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class FullModel(torch.nn.Module):
    """``CLIPModel`` outputs as optimum's CLIP export names them."""

    def __init__(self, model: GeoRSCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, pixel_values, attention_mask):
        out = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        return out.logits_per_image, out.logits_per_text, out.text_embeds, out.image_embeds


def _dummy_inputs(model: GeoRSCLIPModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size)
    ids = torch.tensor([[49406, 320, 1125, 49407, 49407], [49406, 320, 539, 1125, 49407]])
    ids = ids.clamp(max=model.config.text_config.vocab_size - 1)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    return pixels, ids, mask


def export_onnx(
    model_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None, *, quantize: bool = True,
    opset: int = OPSET,
) -> dict[str, Path]:
    """Export ``model_dir``'s towers (and the whole CLIPModel) to ONNX in ``output_dir`` (default
    ``model_dir/onnx``); returns ``{"vision"|"text"|"model"[_quantized]: path}``.

    Files are written in a temporary folder beside the output and moved in at the end, so a failed export
    leaves no half-written ``onnx/`` folder.
    """
    model, processor = load_model(model_dir, "cpu", "fp32")
    model.set_attn_implementation("eager")  # plain MatMul/Softmax graph: every ONNX runtime runs it
    output = Path(output_dir) if output_dir is not None else Path(model_dir) / "onnx"
    output.parent.mkdir(parents=True, exist_ok=True)
    pixels, ids, mask = _dummy_inputs(model)
    batch = {0: "batch_size"}
    text_axes = {0: "batch_size", 1: "sequence_length"}
    specs = {
        "vision": (VisionTower(model), (pixels,), ["pixel_values"], ["image_embeds"],
                   {"pixel_values": batch, "image_embeds": batch}),
        "text": (TextTower(model), (ids, mask), ["input_ids", "attention_mask"], ["text_embeds"],
                 {"input_ids": text_axes, "attention_mask": text_axes, "text_embeds": batch}),
        "model": (FullModel(model), (ids, pixels, mask), ["input_ids", "pixel_values", "attention_mask"],
                  ["logits_per_image", "logits_per_text", "text_embeds", "image_embeds"],
                  {"input_ids": text_axes, "attention_mask": text_axes, "pixel_values": {0: "image_batch_size"},
                   "logits_per_image": {0: "image_batch_size", 1: "text_batch_size"},
                   "logits_per_text": {0: "text_batch_size", 1: "image_batch_size"},
                   "text_embeds": {0: "text_batch_size"}, "image_embeds": {0: "image_batch_size"}}),
    }
    written: dict[str, Path] = {}
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp"))
    try:
        for key, (module, args, inputs, outputs, axes) in specs.items():
            path = tmp / FILES[key]
            with torch.no_grad():
                torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                                  dynamic_axes=axes, opset_version=opset, dynamo=False)
            written[key] = path
            if quantize:
                written[f"{key}_quantized"] = _quantize(path)
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = {key: output / path.name for key, path in written.items()}
    preprocessor = Path(model_dir) / "preprocessor_config.json"
    if output.parent.resolve() == Path(model_dir).resolve() and not preprocessor.exists():
        # transformers 5 keeps the image settings inside processor_config.json; transformers.js reads them
        # from preprocessor_config.json, as transformers 4 wrote it
        processor.image_processor.to_json_file(str(preprocessor))
        result["preprocessor_config"] = preprocessor
    logger.info("ONNX export of %s: %s", model_dir, ", ".join(str(p) for p in result.values()))
    return result


def _quantize(path: Path) -> Path:
    """onnxruntime dynamic int8 quantization of ``path`` -> ``<stem>_quantized.onnx`` (transformers.js q8)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = path.with_name(f"{path.stem}_quantized.onnx")
    quantize_dynamic(str(path), str(target), weight_type=QuantType.QUInt8)
    return target


class OnnxEmbedder:
    """Embeddings from an exported ``onnx/`` folder with onnxruntime: the same calls as GeoRSCLIPModel.

    ``image_embeddings(pixels)`` / ``text_embeddings(texts, processor)`` return unit-norm float32 CPU tensors.
    """

    def __init__(self, onnx_dir: str | os.PathLike, quantized: bool = False, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        suffix = "_quantized" if quantized else ""
        self.sessions = {}
        for key in ("vision", "text"):
            path = Path(onnx_dir) / FILES[key].replace(".onnx", f"{suffix}.onnx")
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: export it with python -m modeling_georsclip.onnx_export")
            self.sessions[key] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inference_precision = "onnx-int8" if quantized else "onnx"

    def image_embeddings(self, pixel_values: torch.Tensor, batch_size: int = 64, normalize: bool = True):
        chunks = [self.sessions["vision"].run(["image_embeds"], {"pixel_values": pixel_values[s : s + batch_size]
                                                                 .numpy().astype(np.float32)})[0]
                  for s in range(0, len(pixel_values), batch_size)]
        feats = torch.from_numpy(np.concatenate(chunks))
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def text_embeddings(self, texts: Sequence[str], tokenizer, batch_size: int = 256, normalize: bool = True):
        chunks = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(text=list(texts[start : start + batch_size]), padding=True, truncation=True,
                            max_length=77, return_tensors="np")
            feed = {"input_ids": enc["input_ids"].astype(np.int64),
                    "attention_mask": enc["attention_mask"].astype(np.int64)}
            chunks.append(self.sessions["text"].run(["text_embeds"], feed)[0])
        feats = torch.from_numpy(np.concatenate(chunks))
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeling_georsclip.onnx_export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder (a converted GeoRSCLIP/CLIP checkpoint)")
    parser.add_argument("--output", default=None, help="output folder (default: MODEL/onnx, transformers.js layout)")
    parser.add_argument("--no-quantize", action="store_true", help="skip the *_quantized.onnx (q8) twins")
    parser.add_argument("--opset", type=int, default=OPSET)
    args = parser.parse_args(argv)
    try:
        files = export_onnx(args.model, args.output, quantize=not args.no_quantize, opset=args.opset)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for key, path in files.items():
        print(f"{key:<16} {path}  ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
