"""localize on a big COG: whole pipeline vs the model forward alone on the same crops, and the peak RSS.

    PYTHONPATH=. python benchmarks/localize_speed.py [--scene-size 10000] [--window-sizes 256,512,768]
                                                     [--model b32|tiny] [--batch-size 32] [--queries 1]

1. A child process writes, in a temp dir, a ``--scene-size`` squared synthetic RGB COG (the vendored DOTA demo
   image mirrored across the scene, DEFLATE, 512 px tiles, internal overviews) and the model checkpoint, so
   neither counts in this process's memory. This process loads the model with ``inference.load_model``.
2. ``localize_to_folder`` (what ``python -m modeling_georsclip.localize`` runs after loading the model): every
   window read from disk at crop size, preprocessed, embedded; heat map painted, blurred and written as a
   float32 GeoTIFF strip by strip; GeoJSON; PNG overlay. Wall time, and the peak RSS while it runs (the
   kernel's high-water mark, reset after the model was loaded: model and libraries included).
3. The model forward alone (``model.image_embeddings``) on the same crops' pixel tensors, batch by batch
   (preparing each batch is not timed). Prints pipeline / forward (goal <= 1.25) and peak RSS (goal <= 2 GiB).

The model is ViT-B-32-sized (transformers CLIPConfig with B-32 dimensions, random weights), fp32.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import torch
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from modeling_georsclip import GeoRSCLIPProcessor
from modeling_georsclip.evaluation.selo import CROP_SIZE, selo_windows
from modeling_georsclip.geo import parse_int_list, read_window
from modeling_georsclip.inference import load_model
from modeling_georsclip.localize import localize_to_folder
from modeling_georsclip.raster import open_scene
from modeling_georsclip.testing import tiny_clip

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "modeling_georsclip/samples/rs-samples/images/mmrotate__dota_demo.jpg"
STRIP = 512


def write_cog(path: Path, size: int) -> None:
    """A size x size RGB COG in UTM 33N (10 m pixels): the source image mirrored to fill it, with overviews."""
    source = np.asarray(Image.open(SOURCE).convert("RGB"))
    tile = np.concatenate([source, source[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[::-1]], axis=0)  # mirrored 2 x 2: seamless when repeated
    plain = path.with_suffix(".plain.tif")
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(400000, 5000000, 10, 10), tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", BIGTIFF="IF_SAFER")
    reps = (-(-size // tile.shape[0]) + 1, -(-size // tile.shape[1]))
    with rasterio.open(plain, "w", **profile) as dst:
        for row in range(0, size, STRIP):
            rows = np.arange(row, min(row + STRIP, size)) % tile.shape[0]
            band = np.tile(tile[rows], (1, reps[1], 1))[:, :size]
            dst.write(band.transpose(2, 0, 1), window=rasterio.windows.Window(0, row, size, len(rows)))
        dst.build_overviews([2, 4, 8, 16, 32], Resampling.average)
    rasterio.shutil.copy(plain, path, driver="COG", compress="deflate", blocksize=512, overview_resampling="average")
    plain.unlink()


def write_model(path: Path, kind: str) -> None:
    from selo_speed import b32_model  # imported here: selo_speed loads HF datasets, which localize does not

    model = b32_model() if kind == "b32" else tiny_clip(image_size=224, patch_size=32)
    model.save_pretrained(path)
    GeoRSCLIPProcessor.default(image_size=224).save_pretrained(path)


def reset_peak_rss() -> None:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def status_mib(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (high-water mark) of this process, in MiB."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key)) / 1024


def forward_alone(model, processor, scene_path: Path, windows: np.ndarray, batch_size: int) -> float:
    """Seconds the model forward takes on the pipeline's crops (crops read and preprocessed untimed)."""
    total = 0.0
    with open_scene(scene_path) as scene:
        for start in range(0, len(windows), batch_size):
            crops = [read_window(scene, w, CROP_SIZE) for w in windows[start : start + batch_size]]
            pixels = processor(images=crops, return_tensors="pt")["pixel_values"]
            begin = time.perf_counter()
            model.image_embeddings(pixels, batch_size=len(pixels))
            total += time.perf_counter() - begin
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene-size", type=int, default=10_000)
    parser.add_argument("--window-sizes", default="256,512,768")
    parser.add_argument("--model", choices=["b32", "tiny"], default="b32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--queries", type=int, default=1, help="queries localized on the scene (crops shared)")
    parser.add_argument("--write-inputs", default=None, help=argparse.SUPPRESS)  # child: COG + model only
    args = parser.parse_args()
    if args.write_inputs:
        write_cog(Path(args.write_inputs) / "scene.tif", args.scene_size)
        write_model(Path(args.write_inputs) / "model", args.model)
        return
    sizes = parse_int_list(args.window_sizes, "--window-sizes")
    with tempfile.TemporaryDirectory() as tmp:
        scene_path = Path(tmp) / "scene.tif"
        begin = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write-inputs", tmp, "--scene-size", str(args.scene_size),
                        "--model", args.model], check=True)
        print(f"COG {args.scene_size}x{args.scene_size}: {scene_path.stat().st_size / 2**20:.0f} MiB on disk; "
              f"inputs written in {time.perf_counter() - begin:.0f} s")
        model, processor = load_model(Path(tmp) / "model", precision="fp32")
        windows = selo_windows(args.scene_size, args.scene_size, sizes)
        print(f"localize: {len(windows)} windows {sizes}, {args.queries} quer{'y' if args.queries == 1 else 'ies'}, "
              f"model {args.model}, {torch.get_num_threads()} threads")
        with torch.no_grad():  # warm-up (allocator, oneDNN kernels) so neither timing pays it
            model.image_embeddings(torch.zeros(args.batch_size, 3, 224, 224), batch_size=args.batch_size)
        rss_before = status_mib("VmRSS")
        reset_peak_rss()
        queries = [f"query number {i}: many buses in a parking lot" for i in range(args.queries)]
        begin = time.perf_counter()
        with open_scene(scene_path) as scene:
            localize_to_folder(model, processor, scene, queries, Path(tmp) / "out", sizes, progress=False,
                               batch_size=args.batch_size)
        pipeline = time.perf_counter() - begin
        peak = status_mib("VmHWM")
        lifetime_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        outputs = sorted(p.name for p in (Path(tmp) / "out").iterdir())
        forward = forward_alone(model, processor, scene_path, windows, args.batch_size)
    print(f"  pipeline {pipeline:.1f} s, forward alone {forward:.1f} s -> ratio {pipeline / forward:.3f} "
          f"(goal <= 1.25)")
    print(f"  peak RSS during localize {peak:.0f} MiB = {peak / 1024:.2f} GiB (goal <= 2 GiB); {rss_before:.0f} MiB "
          f"before it (libraries + model); process lifetime peak {lifetime_peak:.0f} MiB (model loading included)")
    print(f"  outputs {outputs}")


if __name__ == "__main__":
    main()
