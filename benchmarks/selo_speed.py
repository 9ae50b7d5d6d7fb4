"""SeLo pipeline speed vs the model forward alone, and retrieval_recall peak memory at 50k x 250k.

    PYTHONPATH=. python benchmarks/selo_speed.py [--scene 3000] [--model b32|tiny] [--images 50000 --captions 250000]

1. Retrieval memory (run first, so the process-wide peak RSS belongs to it): ``retrieval_recall`` over an
   ``EmbeddingSimilarity`` of random unit embeddings (the score matrix is never materialised; it is computed one
   row chunk at a time, twice). Prints the peak-RSS increase against the size of the full float32 matrix that
   clip_benchmark would hold (plus its equally sized boolean positive-pair matrix).
2. SeLo: one synthetic ``--scene`` x ``--scene`` scene (the vendored DOTA demo image resized), one query,
   ``paper`` mode, with a ViT-B-32-sized CLIP (transformers CLIPConfig with B-32 dimensions, random weights).
   Times the whole pipeline (read, crop, JPEG round trips, preprocessing, forward, heat map, median blur,
   metrics) and, in the same run, the model forward alone on the same crops' pixel tensors; prints the ratio.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modeling_georsclip import GeoRSCLIPModel, GeoRSCLIPProcessor
from modeling_georsclip.convert import clip_config_from_arch
from modeling_georsclip.evaluation.datasets import SeloQuery, SeloSet
from modeling_georsclip.evaluation.selo import evaluate_selo, read_scene, selo_windows, window_crops
from modeling_georsclip.metrics import EmbeddingSimilarity, retrieval_recall
from modeling_georsclip.resources import get_arch_config
from modeling_georsclip.testing import tiny_clip

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def retrieval_memory(n_images: int, n_captions: int, dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=-1)
    owner = torch.arange(n_captions) % n_images
    texts = torch.nn.functional.normalize(images[owner] + 2.0 * torch.randn(n_captions, dim, generator=g), dim=-1)
    base_now, base_peak = current_rss_mib(), peak_rss_mib()
    start = time.perf_counter()
    metrics = retrieval_recall(EmbeddingSimilarity(texts, images), owner)
    seconds = time.perf_counter() - start
    increase = peak_rss_mib() - max(base_now, base_peak)
    full = n_images * n_captions * 5 / 2**20  # float32 scores + bool positive pairs, clip_benchmark's minimum
    print(f"retrieval_recall {n_images} images x {n_captions} captions (dim {dim}): {seconds:.1f} s, "
          f"peak RSS increase {max(increase, 0):.0f} MiB (embeddings {(texts.numel() + images.numel()) * 4 / 2**20:.0f} MiB "
          f"held before); full-matrix approach needs >= {full / 1024:.1f} GiB -> ratio {max(increase, 1) / full:.4f}")
    print(f"  mR = {metrics['mR']:.2f}")


def b32_model() -> GeoRSCLIPModel:
    torch.manual_seed(0)
    return GeoRSCLIPModel(clip_config_from_arch(get_arch_config("ViT-B-32-quickgelu"))).eval()


def selo_speed(scene_size: int, model_kind: str, batch_size: int, device: str = "cpu") -> None:
    model = b32_model() if model_kind == "b32" else tiny_clip(image_size=224, patch_size=32)
    model.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    processor = GeoRSCLIPProcessor.default(image_size=224)
    with tempfile.TemporaryDirectory() as tmp:
        scene_path = Path(tmp) / "scene.jpg"
        source = Image.open(ROOT / "samples/rs-samples/images/mmrotate__dota_demo.jpg").convert("RGB")
        source.resize((scene_size, scene_size), Image.Resampling.BICUBIC).save(scene_path, quality=95)
        dataset = SeloSet("bench", [SeloQuery(scene_path, "many yellow buses in a parking lot",
                                              [[[100, 100], [900, 100], [900, 700], [100, 700]]])])
        windows = selo_windows(scene_size, scene_size)
        print(f"SeLo: {scene_size}x{scene_size} scene, {len(windows)} windows, model {model_kind}, "
              f"{torch.get_num_threads()} threads, device {device}")
        with torch.no_grad():  # warm-up (allocator, oneDNN kernels) so neither timing pays it
            model.get_image_features(pixel_values=torch.zeros(batch_size, 3, 224, 224, device=device))
        sync()
        start = time.perf_counter()
        result = evaluate_selo(model, processor, dataset, mode="paper", batch_size=batch_size)
        sync()
        pipeline = time.perf_counter() - start

        scene = read_scene(scene_path, "paper")
        pixels = torch.cat([processor(images=window_crops(scene, windows[s : s + batch_size], "paper"),
                                      return_tensors="pt")["pixel_values"] for s in range(0, len(windows), batch_size)])
        pixels = pixels.to(device)
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(pixels), batch_size):
                model.get_image_features(pixel_values=pixels[s : s + batch_size])
        sync()
        forward = time.perf_counter() - start
    print(f"  whole pipeline {pipeline:.1f} s, forward alone {forward:.1f} s -> ratio {pipeline / forward:.3f} "
          f"(goal <= 1.25); Rmi {result['Rmi']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", type=int, default=3000)
    parser.add_argument("--model", choices=["b32", "tiny"], default="b32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--captions", type=int, default=250_000)
    parser.add_argument("--dim", type=int, default=64, help="embedding size for the retrieval memory run")
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--skip-selo", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the model runs (cuda for the GPU check)")
    args = parser.parse_args()
    np.random.seed(0)
    if not args.skip_retrieval:
        retrieval_memory(args.images, args.captions, args.dim)
    if not args.skip_selo:
        selo_speed(args.scene, args.model, args.batch_size, args.device)


if __name__ == "__main__":
    main()
