"""SeLo pipeline speed (vs the model forward alone, at each precision, and the whole evaluate.py command),
and retrieval_recall peak memory at 50k x 250k.

    PYTHONPATH=. python benchmarks/selo_speed.py [--scene 3000] [--model b32|tiny] [--images 50000 --captions 250000]
    PYTHONPATH=. python benchmarks/selo_speed.py --skip-retrieval --precisions fp32,bf16,int8 --cli-reps 1

1. Retrieval memory (run first, so the process-wide peak RSS belongs to it): ``retrieval_recall`` over an
   ``EmbeddingSimilarity`` of random unit embeddings (the score matrix is never materialised; it is computed one
   row chunk at a time, twice). Prints the peak-RSS increase against the size of the full float32 matrix that
   clip_benchmark would hold (plus its equally sized boolean positive-pair matrix).
2. SeLo: one synthetic ``--scene`` x ``--scene`` scene (the vendored DOTA demo image resized), one query,
   ``paper`` mode, with a ViT-B-32-sized CLIP (transformers CLIPConfig with B-32 dimensions, random weights).
   Times the whole pipeline (read, crop, JPEG round trips, preprocessing, forward, heat map, median blur,
   metrics) and, in the same run, the model forward alone on the same crops' pixel tensors; prints the ratio.
3. The whole SeLo scene (``evaluate_selo``) at each of ``--precisions``, interleaved (fp32, bf16, int8, fp32,
   ...), with the speed-up over fp32 and the min cosine of the crop and caption embeddings to fp32's.
4. The whole ``evaluate.py --tasks selo`` command (process start, imports, model load, SeLo, overlays, results
   JSON, model card) on the same scene saved as an AIR-SLT folder with 3 queries and the B-32 model saved
   as a folder, at each precision, interleaved ``--cli-reps`` times; wall-clock ratios to fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modeling_georsclip import GeoRSCLIPModel, GeoRSCLIPProcessor
from modeling_georsclip.convert import clip_config_from_arch
from modeling_georsclip.evaluation.datasets import load_eval_dataset
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
    """A random ViT-B-32 (QuickGELU) CLIP built from the packaged open_clip arch config."""
    torch.manual_seed(0)
    return GeoRSCLIPModel(clip_config_from_arch(get_arch_config("ViT-B-32-quickgelu"))).eval()


def make_scene(folder: Path, scene_size: int) -> Path:
    """The vendored DOTA demo image resized to ``scene_size``, as an AIR-SLT folder with 3 queries."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    source = Image.open(ROOT / "samples/rs-samples/images/mmrotate__dota_demo.jpg").convert("RGB")
    source.resize((scene_size, scene_size), Image.Resampling.BICUBIC).save(folder / "imgs" / "0.jpg", quality=95)
    box = [[[100, 100], [900, 100], [900, 700], [100, 700]]]
    anno = [{"caption": c, "jpg_name": "0.jpg", "points": box} for c in
            ("many yellow buses in a parking lot", "a large building with a flat roof", "cars next to the road")]
    (folder / "anno.json").write_text(json.dumps(anno))
    return folder


class Recorder:
    """A model proxy that keeps every embedding ``evaluate_selo`` asks for (to compare precisions)."""

    def __init__(self, model):
        self.model, self.images, self.texts = model, [], []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def image_embeddings(self, *args, **kwargs):
        self.images.append(self.model.image_embeddings(*args, **kwargs))
        return self.images[-1]

    def text_embeddings(self, *args, **kwargs):
        self.texts.append(self.model.text_embeddings(*args, **kwargs))
        return self.texts[-1]


def selo_speed(scene_size: int, model_kind: str, batch_size: int, precisions: list[str], reps: int,
               device: str = "cpu") -> None:
    from modeling_georsclip.inference import prepare_for_inference

    model = b32_model() if model_kind == "b32" else tiny_clip(image_size=224, patch_size=32)
    model.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    processor = GeoRSCLIPProcessor.default(image_size=224)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_scene(Path(tmp) / "selo", scene_size)
        dataset = load_eval_dataset(str(folder), "selo")
        scene_path = folder / "imgs" / "0.jpg"
        windows = selo_windows(scene_size, scene_size)
        print(f"SeLo: {scene_size}x{scene_size} scene, {len(windows)} windows, {len(dataset.queries)} queries, "
              f"model {model_kind}, batch {batch_size}, {torch.get_num_threads()} threads")
        with torch.no_grad():  # warm-up (allocator, oneDNN kernels) so neither timing pays it
            model.get_image_features(pixel_values=torch.zeros(batch_size, 3, 224, 224, device=device))
        sync()
        start = time.perf_counter()
        evaluate_selo(model, processor, dataset, mode="paper", batch_size=batch_size)
        sync()
        pipeline = time.perf_counter() - start

        scene = read_scene(scene_path, "paper")
        pixels = torch.cat([processor(images=window_crops(scene, windows[s : s + batch_size], "paper"),
                                      return_tensors="pt")["pixel_values"] for s in range(0, len(windows), batch_size)])
        start = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(pixels), batch_size):
                model.get_image_features(pixel_values=pixels[s : s + batch_size].to(device))
        sync()
        forward = time.perf_counter() - start
        print(f"  fp32: whole pipeline {pipeline:.1f} s, forward alone {forward:.1f} s -> ratio "
              f"{pipeline / forward:.3f} (goal <= 1.25)")

        prepared = {p: prepare_for_inference(model, p, device) for p in precisions}  # int8: a quantized copy
        timings: dict[str, list[float]] = {p: [] for p in precisions}
        recorded: dict[str, Recorder] = {}
        for _ in range(reps):
            for precision in precisions:
                prepare_for_inference(prepared[precision], precision, device)  # autocast flag of the shared model
                recorded[precision] = Recorder(prepared[precision])
                start = time.perf_counter()
                evaluate_selo(recorded[precision], processor, dataset, mode="paper", batch_size=batch_size)
                timings[precision].append(time.perf_counter() - start)
        prepare_for_inference(model, "fp32", device)
        print(f"  whole SeLo scene at each precision ({reps} interleaved reps, median):")
        print(f"  {'precision':<10} {'seconds':>8} {'vs fp32':>8} {'min cos crops':>14} {'min cos captions':>17}")
        ref = recorded[precisions[0]]
        for precision in precisions:
            rec = recorded[precision]
            crops = (torch.cat(rec.images) * torch.cat(ref.images)).sum(-1).min().item()
            texts = (torch.cat(rec.texts) * torch.cat(ref.texts)).sum(-1).min().item()
            seconds = statistics.median(timings[precision])
            print(f"  {precision:<10} {seconds:>8.1f} {statistics.median(timings[precisions[0]]) / seconds:>8.2f} "
                  f"{crops:>14.5f} {texts:>17.5f}   runs: {', '.join(f'{t:.1f}' for t in timings[precision])}")


def evaluate_cli_speed(scene_size: int, model_kind: str, batch_size: int, precisions: list[str], reps: int) -> None:
    """Wall-clock of the whole ``evaluate.py --tasks selo`` command per precision, interleaved."""
    model = b32_model() if model_kind == "b32" else tiny_clip(image_size=224, patch_size=32)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model.save_pretrained(model_dir)
        GeoRSCLIPProcessor.default(image_size=224).save_pretrained(model_dir)
        folder = make_scene(Path(tmp) / "selo", scene_size)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "GEORSCLIP_LOG_LEVEL": "WARNING"}
        timings: dict[str, list[float]] = {p: [] for p in precisions}
        for rep in range(reps):
            for precision in precisions:
                out = Path(tmp) / f"{precision}-{rep}" / "results.json"
                command = [sys.executable, str(ROOT / "evaluate.py"), "--model", str(model_dir), "--tasks", "selo",
                           "--dataset", f"selo:bench={folder}", "--output", str(out), "--precision", precision,
                           "--batch-size", str(batch_size)]
                start = time.perf_counter()
                subprocess.run(command, env=env, check=True, capture_output=True, cwd=tmp)
                timings[precision].append(time.perf_counter() - start)
        print(f"whole `evaluate.py --tasks selo` command, {scene_size}x{scene_size} scene, 3 queries, overlays, "
              f"model {model_kind} ({reps} interleaved reps, median):")
        base = statistics.median(timings[precisions[0]])
        for precision in precisions:
            seconds = statistics.median(timings[precision])
            print(f"  {precision:<10} {seconds:>8.1f} s  {base / seconds:>6.2f}x vs {precisions[0]}   runs: "
                  f"{', '.join(f'{t:.1f}' for t in timings[precision])}")


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
    parser.add_argument("--precisions", default="fp32,bf16,int8", help="comma list; the first is the baseline")
    parser.add_argument("--device", default="cpu", help="where the model runs (cuda for the GPU check)")
    parser.add_argument("--reps", type=int, default=1, help="interleaved repetitions of the whole SeLo scene")
    parser.add_argument("--cli-reps", type=int, default=1, help="repetitions of the evaluate.py command; 0 skips")
    args = parser.parse_args()
    np.random.seed(0)
    if not args.skip_retrieval:
        retrieval_memory(args.images, args.captions, args.dim)
    if not args.skip_selo:
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
        selo_speed(args.scene, args.model, args.batch_size, precisions, args.reps, args.device)
        if args.cli_reps > 0:
            evaluate_cli_speed(args.scene, args.model, args.batch_size, precisions, args.cli_reps)


if __name__ == "__main__":
    main()
