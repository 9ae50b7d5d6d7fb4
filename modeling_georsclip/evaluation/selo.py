"""Semantic localization (SeLo) on AIR-SLT: caption -> probability map over a large scene -> Rsu/Rda/Ras/Rmi.

The published pipeline (SemanticLocalizationMetrics ``predict/generate_selo.py``, reused by GeoRSCLIP's
``inference_tool.py``): square windows of 256, 512 and 768 px, each size on two grids (from 0 and shifted by
half a window), windows passing the border moved back inside it (duplicates counted once, as the reference's
file names collapse them); every crop resized to 256 x 256 (OpenCV bicubic) and preprocessed; the map is the
per-pixel mean of crop-caption cosine similarities, min-max scaled to 8 bits and median-blurred (kernel 251).

``mode="paper"`` also repeats the reference's lossy steps, in memory: each crop goes through a JPEG
(OpenCV, quality 95) and is decoded by PIL, and the 8-bit map goes through a JPEG before scoring.
``mode="clean"`` skips both. Crops of one scene are embedded once, in batches, and shared by all captions
on that scene; the per-pixel mean uses summed-area tables instead of per-pixel loops.

CLI: ``python -m modeling_georsclip.evaluation.selo --model DIR_OR_HUB_ID --data AIR-SLT_DIR [--mode paper]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..imaging import load_image
from ..inference import add_precision_argument, load_model_or_exit
from ..io import atomic_file
from ..log import get_logger
from ..metrics import selo_scores
from ..modeling import GeoRSCLIPModel
from ..processing import GeoRSCLIPProcessor
from .common import gather, is_main_process, shard
from .datasets import SeloSet, load_eval_dataset

logger = get_logger(__name__)

Mode = Literal["paper", "clean"]
WINDOW_SIZES = (256, 512, 768)
CROP_SIZE = 256
MEDIAN_KERNEL = 251
JPEG_QUALITY = 95  # OpenCV's default, what the reference's cv2.imwrite used
METRIC_KEYS = ("Rsu", "Rda", "Ras", "Rmi")


def selo_windows(height: int, width: int, sizes: Sequence[int] = WINDOW_SIZES) -> np.ndarray:
    """(n, 4) int array of unique windows ``(row0, row1, col0, col1)`` in the reference's order.

    Sizes larger than the scene are skipped (the reference would produce negative offsets there).
    """
    windows: dict[tuple[int, int, int, int], None] = {}
    for step in sizes:
        if step > height or step > width:
            logger.warning("window size %d skipped: scene is only %dx%d", step, width, height)
            continue
        for gap in (step, int(0.5 * step)):
            for col in range(step - gap, width, step):
                col0, col1 = (col, col + step) if col + step < width else (width - step, width)
                for row in range(step - gap, height, step):
                    row0, row1 = (row, row + step) if row + step < height else (height - step, height)
                    windows[(row0, row1, col0, col1)] = None
    if not windows:
        raise ValueError(f"scene {width}x{height} is smaller than every window size {list(sizes)}")
    return np.array(list(windows), dtype=np.int64)


def read_scene(path: str | os.PathLike, mode: Mode) -> np.ndarray:
    """The scene as an RGB uint8 array: OpenCV's decoder in ``paper`` mode (as the reference), else PIL."""
    if mode == "paper":
        data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else np.empty(0, np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if bgr is not None:
            return np.ascontiguousarray(bgr[..., ::-1])
    return np.asarray(load_image(path))  # raises a clear OSError for unreadable files


def window_crops(scene: np.ndarray, windows: np.ndarray, mode: Mode, crop_size: int = CROP_SIZE) -> list[Image.Image]:
    """The crops of ``windows``, resized to ``crop_size`` (OpenCV bicubic); JPEG round trip in paper mode."""
    crops = []
    for row0, row1, col0, col1 in windows:
        crop = cv2.resize(scene[row0:row1, col0:col1], (crop_size, crop_size), interpolation=cv2.INTER_CUBIC)
        if mode == "paper":
            ok, encoded = cv2.imencode(".jpg", crop[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError("OpenCV could not JPEG-encode a crop")
            crops.append(Image.open(io.BytesIO(encoded.tobytes())).convert("RGB"))
        else:
            crops.append(Image.fromarray(crop))
    return crops


@torch.no_grad()
def embed_windows(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    scene: np.ndarray,
    windows: np.ndarray,
    mode: Mode = "paper",
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Unit-norm embeddings (n_windows, D) of the scene crops, batched through the model in memory.

    The next batch's crops are prepared in a helper thread while the model runs on the current one
    (OpenCV, PIL and torch release the GIL), so preprocessing hides behind the forward pass.
    """

    def prepare(start: int) -> torch.Tensor:
        crops = window_crops(scene, windows[start : start + batch_size], mode)
        return processor(images=crops, return_tensors="pt")["pixel_values"]

    chunks = []
    starts = list(range(0, len(windows), batch_size))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, starts[0])
        for number in tqdm(range(len(starts)), desc="crops", unit="batch", disable=not progress, leave=False):
            pixels = pending.result()
            if number + 1 < len(starts):
                pending = pool.submit(prepare, starts[number + 1])
            chunks.append(model.image_embeddings(pixels, batch_size=len(pixels)))
    return torch.cat(chunks)


def mean_heat_map(scores: np.ndarray, windows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel mean of the window scores over the windows covering each pixel (summed-area tables)."""
    height, width = shape
    row0, row1, col0, col1 = windows.T
    corners = ((row0, col0, 1), (row0, col1, -1), (row1, col0, -1), (row1, col1, 1))
    sums = np.zeros((height + 1, width + 1), dtype=np.float64)
    counts = np.zeros((height + 1, width + 1), dtype=np.int64)
    for rows, cols, sign in corners:
        np.add.at(sums, (rows, cols), sign * scores.astype(np.float64))
        np.add.at(counts, (rows, cols), sign)
    sums = sums.cumsum(axis=0).cumsum(axis=1)[:height, :width]
    counts = counts.cumsum(axis=0).cumsum(axis=1)[:height, :width]
    return sums / np.maximum(counts, 1)


def probability_map(heat: np.ndarray, mode: Mode = "paper") -> tuple[np.ndarray, np.ndarray]:
    """(prob in [0, 1] as scored, 8-bit blurred map for display) from a heat map, as the reference does."""
    adaptive = heat - heat.min()
    peak = adaptive.max()
    gray = np.uint8(255 * (adaptive / peak)) if peak > 0 else np.zeros(heat.shape, np.uint8)
    gray = cv2.medianBlur(gray, MEDIAN_KERNEL)
    scored = gray
    if mode == "paper":
        ok, encoded = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode the probability map")
        scored = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    return scored / 255.0, gray


def write_overlay(
    path: Path, scene_rgb: np.ndarray, gray: np.ndarray, regions: Sequence | None = None, title: str | None = None
) -> None:
    """Scene blended 0.7 / 0.3 with the JET-coloured map (the reference's ``addmap``), as PNG.

    With ``regions`` the ground-truth polygons are outlined in white; ``title`` (caption and scores) is
    written on a dark band across the top, so each picture says what was asked and how it scored.
    """
    overlay = cv2.addWeighted(scene_rgb[..., ::-1], 0.7, cv2.applyColorMap(gray, cv2.COLORMAP_JET), 0.3, 0)
    thickness = max(2, round(max(overlay.shape[:2]) / 400))
    for polygon in regions or []:
        points = np.asarray(polygon, dtype=np.int32).reshape(-1, 1, 2)
        cv2.polylines(overlay, [points], isClosed=True, color=(255, 255, 255), thickness=thickness)
    if title:
        scale = max(overlay.shape[1] / 1600, 0.4)
        band = int(40 * scale) + 10
        overlay[:band] = (overlay[:band] * 0.3).astype(overlay.dtype)
        cv2.putText(overlay, title, (10, band - 12), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    max(1, thickness // 2), cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", overlay)
    if not ok:
        raise RuntimeError(f"OpenCV could not PNG-encode {path}")
    with atomic_file(path, "wb") as handle:
        handle.write(encoded.tobytes())


def evaluate_selo(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    dataset: SeloSet,
    mode: Mode = "paper",
    sizes: Sequence[int] = WINDOW_SIZES,
    batch_size: int = 32,
    output_dir: str | os.PathLike | None = None,
    accelerator: Any | None = None,
) -> dict[str, Any]:
    """Mean Rsu/Rda/Ras/Rmi over the queries (plus each query's scores); one overlay PNG per query.

    Scenes are sharded across processes; an unreadable scene skips its queries, which are counted.
    """
    if mode not in ("paper", "clean"):
        raise ValueError(f"unknown SeLo mode {mode!r}: use 'paper' or 'clean'")
    by_scene: dict[Path, list[int]] = defaultdict(list)
    for index, query in enumerate(dataset.queries):
        by_scene[Path(query.image)].append(index)
    scenes = sorted(by_scene)
    per_query: list[dict[str, Any]] = []
    unreadable: list[str] = []
    main = is_main_process(accelerator)
    for scene_index in tqdm(shard(len(scenes), accelerator), desc="SeLo scenes", disable=not main):
        path = scenes[scene_index]
        try:
            scene = read_scene(path, mode)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            logger.warning("skipped unreadable scene: %s", err)
            unreadable.append(str(err))
            continue
        windows = selo_windows(scene.shape[0], scene.shape[1], sizes)
        crop_embeds = embed_windows(model, processor, scene, windows, mode, batch_size, progress=main)
        for index in by_scene[path]:
            query = dataset.queries[index]
            text = model.text_embeddings([query.caption], processor)[0]
            heat = mean_heat_map((crop_embeds @ text).numpy(), windows, scene.shape[:2])
            prob, gray = probability_map(heat, mode)
            scores = selo_scores(prob, query.regions)
            per_query.append({"index": index, "image": path.name, "caption": query.caption, **scores})
            if output_dir is not None:
                title = f"{query.caption.strip()}  |  Rmi {scores['Rmi']:.3f}"
                write_overlay(Path(output_dir) / f"selo_{index:04d}_{path.stem}.png", scene, gray,
                              regions=query.regions, title=title)
    per_query = sorted(gather(per_query, accelerator), key=lambda q: q["index"])
    unreadable = gather(unreadable, accelerator)
    result: dict[str, Any] = {
        "mode": mode,
        "n_queries": len(per_query),
        "n_scenes": len(scenes) - len(unreadable),
        "n_unreadable": len(unreadable),
        "n_skipped_queries": len(dataset.queries) - len(per_query),
    }
    if per_query:
        result.update({key: float(np.mean([q[key] for q in per_query])) for key in METRIC_KEYS})
    result["per_query"] = per_query
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="GeoRSCLIP semantic localization on AIR-SLT")
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--data", required=True, help="AIR-SLT folder (anno.json + imgs/) or Hub dataset id")
    parser.add_argument("--mode", default="paper", choices=["paper", "clean"])
    parser.add_argument("--output-dir", default=None, help="where to write one heat-map overlay PNG per query")
    parser.add_argument("--batch-size", type=int, default=32)
    add_precision_argument(parser)
    args = parser.parse_args(argv)
    model, processor = load_model_or_exit(args.model, precision=args.precision)
    dataset = load_eval_dataset(args.data, "selo")
    result = evaluate_selo(model, processor, dataset, args.mode, batch_size=args.batch_size, output_dir=args.output_dir)
    print(json.dumps({"precision": model.inference_precision, **result}, indent=2))


if __name__ == "__main__":
    main()
