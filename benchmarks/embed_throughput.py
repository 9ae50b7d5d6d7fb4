"""Image-embedding throughput: GeoRSCLIPModel (transformers) vs open_clip on the same converted weights.

    PYTHONPATH=. python benchmarks/embed_throughput.py --arch ViT-B-32-quickgelu --batch 16 --reps 5 --threads 2

Random ViT-B-32-sized open_clip weights are converted with ``modeling_georsclip.convert``; both models
embed the same pixel batch with the same thread count and dtype (``--dtype fp32|bf16``), ``torch.inference_mode``. Repetitions are
interleaved (open_clip, ours-sdpa, ours-eager, open_clip, ...) so that load from other processes hits all
alike; the median images/s and the ratio ours / open_clip are printed, with the max embedding difference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32-quickgelu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights and pixels of both")
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    from open_clip.model import CLIP

    from modeling_georsclip.convert import ARCHS, build_model, normalize_state_dict, open_clip_model_config

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
    reference.to(device, dtype)
    for model in ours.values():
        model.to(device, dtype)
    pixels = torch.randn(args.batch, 3, spec.image_size, spec.image_size, device=device, dtype=dtype)

    def run_open_clip() -> torch.Tensor:
        return reference.encode_image(pixels)

    def runner(model):
        return lambda: model.get_image_features(pixel_values=pixels).pooler_output

    candidates = {"open_clip": run_open_clip, **{f"ours ({name})": runner(m) for name, m in ours.items()}}
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
    baseline_rate = args.batch / statistics.median(timings["open_clip"])
    print(f"arch {spec.name}, batch {args.batch}, threads {args.threads}, device {device}, {args.dtype}, "
          f"{args.reps} interleaved reps (median)")
    print(f"{'model':<16} {'images/s':>10} {'ratio':>7} {'max |diff|':>11}")
    for name in candidates:
        rate = args.batch / statistics.median(timings[name])
        diff = (F.normalize(outputs[name].float(), dim=-1) - base).abs().max().item()
        print(f"{name:<16} {rate:>10.2f} {rate / baseline_rate:>7.3f} {diff:>11.2e}")


if __name__ == "__main__":
    main()
