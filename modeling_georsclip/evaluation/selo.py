"""Semantic localization (SeLo) on AIR-SLT: caption -> probability map over a large scene -> Rsu/Rda/Ras/Rmi.

The published pipeline (SemanticLocalizationMetrics ``predict/generate_selo.py``, reused by GeoRSCLIP's
``inference_tool.py``): square windows of 256, 512 and 768 px, each size on two grids (from 0 and shifted by
half a window), windows passing the border moved back inside it (duplicates counted once, as the reference's
file names collapse them); every crop resized to 256 x 256 (OpenCV bicubic) and preprocessed; the map is the
per-pixel mean of crop-caption cosine similarities, min-max scaled to 8 bits and median-blurred (kernel 251).

``mode="paper"`` also repeats the reference's lossy steps, in memory: each crop goes through a JPEG
(OpenCV, quality 95) and is decoded by PIL, and the 8-bit map goes through a JPEG before scoring.
``mode="clean"`` skips both. Crops of one scene are embedded once and shared by all captions on that scene;
the crops of all scenes stream to the model in full batches, prepared in a helper thread, and heat maps are
computed in another while the model works; the per-pixel mean uses summed-area tables over window cells.

CLI: ``python -m modeling_georsclip.evaluation.selo --model DIR_OR_HUB_ID --data AIR-SLT_DIR [--mode paper]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import TYPE_CHECKING, Any, Literal

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

if TYPE_CHECKING:  # .common/.datasets import HF datasets (+80 MB RSS): imported where used, so that
    from .datasets import SeloSet  # localize/classify_tiles (which share this module's map code) stay light

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


@dataclass
class _Scene:
    """A scene on its way through the crop stream: key, pixels, windows and its embeddings so far."""

    key: Any
    image: np.ndarray
    windows: np.ndarray
    chunks: list[torch.Tensor] = field(default_factory=list)
    filled: int = 0


SceneBatch = tuple[list[_Scene], "torch.Tensor | None", list[tuple[_Scene, int]]]


def _crop_batches(scenes: Iterable[tuple[Any, np.ndarray, np.ndarray]], processor: GeoRSCLIPProcessor, mode: Mode,
                  batch_size: int) -> Iterator[SceneBatch]:
    """``(scenes started, pixel batch, [(scene, rows in the batch)])``: crops of all scenes in full batches.

    A batch may finish one scene and start the next, so every forward pass but the very last is full.
    """
    started: list[_Scene] = []
    crops: list[Image.Image] = []
    owners: list[tuple[_Scene, int]] = []
    for key, image, windows in scenes:
        scene = _Scene(key, image, windows)
        started.append(scene)
        cursor = 0
        while cursor < len(windows):
            take = min(batch_size - len(crops), len(windows) - cursor)
            crops += window_crops(image, windows[cursor : cursor + take], mode)
            owners.append((scene, take))
            cursor += take
            if len(crops) == batch_size:
                yield started, processor(images=crops, return_tensors="pt")["pixel_values"], owners
                started, crops, owners = [], [], []
    if started or crops:
        yield started, processor(images=crops, return_tensors="pt")["pixel_values"] if crops else None, owners


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _in_background(items: Iterator, depth: int = 2) -> Iterator:
    """``items`` produced by a helper thread, up to ``depth`` ahead of the consumer.

    Why a thread and not a DataLoader: the work (scene decoding, OpenCV crops and JPEG round trips, PIL
    resizes, tensor conversion) releases the GIL, so one thread overlaps it with the forward pass without
    pickling scenes to worker processes. An exception in the thread is raised in the consumer.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # handed to the consumer, which raises it
            put(_Failure(err))

    thread = threading.Thread(target=work, name="selo-crops", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


_DONE = object()


@torch.no_grad()
def stream_window_embeddings(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    scenes: Iterable[tuple[Any, np.ndarray, np.ndarray]],
    mode: Mode = "paper",
    batch_size: int = 32,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[tuple[Any, np.ndarray, np.ndarray, torch.Tensor]]:
    """``(key, scene, windows, unit-norm crop embeddings)`` for each ``(key, scene, windows)``, in order.

    ``scenes`` is iterated in a helper thread (so it may read scenes lazily from disk); the crops of all
    scenes reach the model in full batches of ``batch_size`` while the next batch is prepared; the model is
    loaded once by the caller. ``total`` (crops) only sizes the progress bar.
    """
    bar = tqdm(total=total, desc="crops", unit="crop", disable=not progress, leave=False)
    pending: deque[_Scene] = deque()
    try:
        for started, pixels, owners in _in_background(_crop_batches(scenes, processor, mode, batch_size)):
            pending.extend(started)
            if pixels is not None:
                embeds = model.image_embeddings(pixels, batch_size=len(pixels))
                offset = 0
                for scene, rows in owners:
                    scene.chunks.append(embeds[offset : offset + rows])
                    scene.filled, offset = scene.filled + rows, offset + rows
                bar.update(len(pixels))
            while pending and pending[0].filled == len(pending[0].windows):
                scene = pending.popleft()
                yield scene.key, scene.image, scene.windows, torch.cat(scene.chunks)
    finally:
        bar.close()


def embed_windows(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    scene: np.ndarray,
    windows: np.ndarray,
    mode: Mode = "paper",
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Unit-norm embeddings (n_windows, D) of one scene's crops (``stream_window_embeddings`` for one scene)."""
    stream = stream_window_embeddings(model, processor, [(None, scene, windows)], mode, batch_size, progress,
                                      total=len(windows))
    (embeds,) = [embeds for *_, embeds in stream]
    return embeds


@dataclass(frozen=True)
class HeatGrid:
    """A per-pixel mean heat map stored once per cell of the grid the window edges make.

    The map is constant between window edges, so a 20,000 x 20,000 scene (a 3.2 GB float64 map) needs only
    a few hundred cells; ``expand`` paints any band of rows at full resolution when it is needed.
    """

    row_edges: np.ndarray  # (R + 1,) sorted pixel rows, 0 ... height
    col_edges: np.ndarray  # (C + 1,) sorted pixel columns, 0 ... width
    cells: np.ndarray  # (R, C) value of each cell

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.row_edges[-1]), int(self.col_edges[-1])

    def expand(self, values: np.ndarray | None = None, rows: tuple[int, int] | None = None) -> np.ndarray:
        """``values`` (default ``cells``; any (R, C) array) painted at full resolution for pixel ``rows``."""
        values = self.cells if values is None else values
        start, stop = rows or (0, self.shape[0])
        row_cell = np.searchsorted(self.row_edges, np.arange(start, stop), side="right") - 1
        col_cell = np.searchsorted(self.col_edges, np.arange(self.shape[1]), side="right") - 1
        return values[row_cell][:, col_cell]


def heat_grid(scores: np.ndarray, windows: np.ndarray, shape: tuple[int, int]) -> HeatGrid:
    """Per-pixel mean of the window scores over the windows covering each pixel, one value per grid cell.

    Summed-area tables over the compressed grid: the same additions in the same order as over every pixel
    (the skipped rows and columns only add zeros), so ``expand()`` equals the full-size computation exactly.
    """
    height, width = shape
    row0, row1, col0, col1 = windows.T
    row_edges = np.unique(np.concatenate([[0, height], row0, row1]))
    col_edges = np.unique(np.concatenate([[0, width], col0, col1]))
    r0, r1 = np.searchsorted(row_edges, row0), np.searchsorted(row_edges, row1)
    c0, c1 = np.searchsorted(col_edges, col0), np.searchsorted(col_edges, col1)
    corners = ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1))
    sums = np.zeros((len(row_edges), len(col_edges)), dtype=np.float64)
    counts = np.zeros((len(row_edges), len(col_edges)), dtype=np.int64)
    for rows, cols, sign in corners:
        np.add.at(sums, (rows, cols), sign * scores.astype(np.float64))
        np.add.at(counts, (rows, cols), sign)
    sums = sums.cumsum(axis=0).cumsum(axis=1)[:-1, :-1]
    counts = counts.cumsum(axis=0).cumsum(axis=1)[:-1, :-1]
    return HeatGrid(row_edges, col_edges, sums / np.maximum(counts, 1))


def gray_levels(heat: np.ndarray) -> np.ndarray:
    """The reference's min-max scaling of a heat map (or of a HeatGrid's cells) to 8 bits, before the blur."""
    adaptive = heat - heat.min()
    peak = adaptive.max()
    return np.uint8(255 * (adaptive / peak)) if peak > 0 else np.zeros(heat.shape, np.uint8)


def probability_map(heat: np.ndarray | HeatGrid, mode: Mode = "paper") -> tuple[np.ndarray, np.ndarray]:
    """(prob in [0, 1] as scored, 8-bit blurred map for display) from a heat map, as the reference does.

    A HeatGrid is scaled on its cells and painted as 8 bits: the min-max scaling is elementwise and every
    cell holds at least one pixel, so this equals scaling the full float64 map (8x less memory and time).
    """
    levels = heat.expand(gray_levels(heat.cells)) if isinstance(heat, HeatGrid) else gray_levels(heat)
    gray = cv2.medianBlur(levels, MEDIAN_KERNEL)
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

    Scenes are sharded across processes; an unreadable scene skips its queries, which are counted. The
    crops of all scenes and window sizes stream through the model in full batches (``stream_window_embeddings``).
    """
    if mode not in ("paper", "clean"):
        raise ValueError(f"unknown SeLo mode {mode!r}: use 'paper' or 'clean'")
    by_scene: dict[Path, list[int]] = defaultdict(list)
    for index, query in enumerate(dataset.queries):
        by_scene[Path(query.image)].append(index)
    scenes = sorted(by_scene)
    from .common import gather, is_main_process, shard

    mine = [scenes[i] for i in shard(len(scenes), accelerator)]
    main = is_main_process(accelerator)
    # one caption at a time, as before: the same numbers as a per-query run (batching pads differently)
    texts = {i: model.text_embeddings([dataset.queries[i].caption], processor)[0] for p in mine for i in by_scene[p]}
    unreadable: list[str] = []

    def readable_scenes() -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
        for path in mine:  # runs in the crop thread: decoding the next scene overlaps the model too
            try:
                scene = read_scene(path, mode)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                logger.warning("skipped unreadable scene: %s", err)
                unreadable.append(str(err))
                continue
            yield path, scene, selo_windows(scene.shape[0], scene.shape[1], sizes)

    def score_query(index: int, path: Path, scene: np.ndarray, windows: np.ndarray, crop_embeds: torch.Tensor):
        query = dataset.queries[index]
        heat = heat_grid((crop_embeds @ texts[index]).numpy(), windows, scene.shape[:2])
        prob, gray = probability_map(heat, mode)
        scores = selo_scores(prob, query.regions)
        if output_dir is not None:
            title = f"{query.caption.strip()}  |  Rmi {scores['Rmi']:.3f}"
            write_overlay(Path(output_dir) / f"selo_{index:04d}_{path.stem}.png", scene, gray,
                          regions=query.regions, title=title)
        return {"index": index, "image": path.name, "caption": query.caption, **scores}

    # Heat maps, scores and overlays of a finished scene's queries run in two more threads while the model
    # embeds the crops of the next scenes (NumPy and OpenCV release the GIL); the last scene's queries run
    # side by side.
    futures = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="selo-maps") as post:
        stream = stream_window_embeddings(model, processor, readable_scenes(), mode, batch_size, progress=main)
        for path, scene, windows, crop_embeds in tqdm(stream, total=len(mine), desc="SeLo scenes", disable=not main):
            futures += [post.submit(score_query, i, path, scene, windows, crop_embeds) for i in by_scene[path]]
        per_query: list[dict[str, Any]] = [future.result() for future in futures]
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
    from .datasets import load_eval_dataset

    model, processor = load_model_or_exit(args.model, precision=args.precision)
    dataset = load_eval_dataset(args.data, "selo")
    result = evaluate_selo(model, processor, dataset, args.mode, batch_size=args.batch_size, output_dir=args.output_dir)
    print(json.dumps({"precision": model.inference_precision, **result}, indent=2))


if __name__ == "__main__":
    main()
