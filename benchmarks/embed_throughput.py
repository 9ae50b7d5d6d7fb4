"""Image-embedding throughput: GeoRSCLIPModel (transformers) vs open_clip, and each inference precision
(bf16 autocast, int8 dynamic quantization, onnxruntime fp32 and q8) vs our fp32, on the same weights.

    PYTHONPATH=. python benchmarks/embed_throughput.py --arch ViT-B-32-quickgelu --batch 16 --reps 5 --threads 2

Random ViT-B-32-sized open_clip weights are converted with ``modeling_georsclip.convert``; every candidate
embeds the same pixel batch with the same thread count under ``torch.inference_mode``. Repetitions are
interleaved (open_clip, ours-sdpa, ours-eager, bf16, int8, onnxruntime, ..., open_clip, ...) so that load from
other processes hits all alike. Printed: median images/s, the ratio to open_clip and to our fp32, the max
embedding difference to open_clip and the min cosine to our fp32. The precision rows time the library path
(``prepare_for_inference`` + ``image_embeddings``); the onnxruntime rows export the towers with
``modeling_georsclip.onnx_export`` first (``--no-onnx`` skips that).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32-quickgelu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default=None,
                        help="comma list of precisions to time (default: bf16,int8 on CPU, bf16,fp16 on GPU)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime rows")
    args = parser.parse_args()

    from open_clip.model import CLIP

    from modeling_georsclip.convert import ARCHS, build_model, normalize_state_dict, open_clip_model_config
    from modeling_georsclip.inference import PrecisionError, prepare_for_inference

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = ARCHS[args.arch]
    reference = CLIP(**open_clip_model_config(spec)).eval()
    state, _ = normalize_state_dict(reference.state_dict())
    ours = {"sdpa": build_model(state, spec)}
    ours["sdpa"].set_attn_implementation("sdpa")
    ours["eager"] = build_model(state, spec)
    ours["eager"].set_attn_implementation("eager")
    device = torch.device(args.device)
    reference.to(device)
    for model in ours.values():
        model.to(device)
    pixels = torch.randn(args.batch, 3, spec.image_size, spec.image_size, device=device)

    def run_open_clip() -> torch.Tensor:
        return reference.encode_image(pixels)

    def runner(model):
        return lambda: model.get_image_features(pixel_values=pixels).pooler_output

    candidates = {"open_clip": run_open_clip, **{f"ours ({name})": runner(m) for name, m in ours.items()}}
    candidates["fp32 embeddings"] = lambda: ours["sdpa"].image_embeddings(pixels, batch_size=args.batch)
    default = "bf16,int8" if device.type == "cpu" else "bf16,fp16"
    for precision in (args.precisions or default).split(","):
        try:
            prepared = prepare_for_inference(build_model(state, spec), precision, device)
        except PrecisionError as err:
            print(f"skipped {precision}: {err}")
            continue
        candidates[f"{prepared.inference_precision} embeddings"] = (
            lambda m=prepared: m.image_embeddings(pixels, batch_size=args.batch))
    tmp = None
    if not args.no_onnx and device.type == "cpu":
        import tempfile

        from modeling_georsclip.onnx_export import OnnxEmbedder, export_onnx

        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name) / "model"
        ours["sdpa"].save_pretrained(folder)
        export_onnx(folder)
        for quantized in (False, True):
            embedder = OnnxEmbedder(folder / "onnx", quantized=quantized, threads=args.threads)
            candidates[f"{embedder.inference_precision} embeddings"] = (
                lambda e=embedder: e.image_embeddings(pixels.cpu(), batch_size=args.batch))

    timings: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        outputs = {name: fn() for name, fn in candidates.items()}  # warm-up
        for _ in range(args.reps):
            for name, fn in candidates.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                timings[name].append(time.perf_counter() - start)

    base = F.normalize(outputs["open_clip"].float(), dim=-1)
    fp32 = F.normalize(outputs["fp32 embeddings"].float().cpu(), dim=-1)
    baseline_rate = args.batch / statistics.median(timings["open_clip"])
    fp32_rate = args.batch / statistics.median(timings["fp32 embeddings"])
    print(f"arch {spec.name}, batch {args.batch}, threads {args.threads}, device {device}, "
          f"{args.reps} interleaved reps (median)")
    print(f"{'path':<22} {'images/s':>9} {'/open_clip':>10} {'/fp32':>7} {'max |diff| oc':>14} {'min cos fp32':>13}")
    for name in candidates:
        rate = args.batch / statistics.median(timings[name])
        out = F.normalize(outputs[name].float().cpu(), dim=-1)
        diff = (out - base.cpu()).abs().max().item()
        cosine = (out * fp32).sum(-1).min().item()
        print(f"{name:<22} {rate:>9.2f} {rate / baseline_rate:>10.3f} {rate / fp32_rate:>7.3f} {diff:>14.2e} "
              f"{cosine:>13.5f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
