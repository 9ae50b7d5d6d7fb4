"""Semantic localization on a scene of any size: text queries in, georeferenced probability maps out.

The method is SeLo's, shared with ``evaluation/selo.py`` in its ``clean`` mode: square windows (256, 512 and
768 px by default, each on two grids), every crop resized to 256 px and embedded, the per-pixel mean of the
crop-query cosine similarities min-max scaled to 8 bits and median-blurred (kernel 251); probability = 8-bit
value / 255. What differs is only how a big scene is handled:

- each window is read from disk on its own, at crop size (GDAL uses the overviews for big windows), so a
  20,000 x 20,000 COG is never loaded whole; crops are embedded once and shared by all queries;
- the heat map is kept per cell of the window-edge grid (``selo.HeatGrid``) and painted and blurred strip by
  strip with a halo of half the kernel, which gives exactly the full-size result in bounded memory.

Outputs per query ``<n>_<slug>`` (numbered from 1 in the order given): a float32 GeoTIFF (scene size, CRS and
geotransform; ``--map-scale N`` writes it N times coarser), a GeoJSON of the top regions (connected areas at
or above ``--threshold`` x the map's peak, ranked by mean probability; in the scene's CRS with a GeoJSON 2008
``crs`` member, or RFC 7946 lon/lat with ``--geojson-crs EPSG:4326``; ``"crs": null`` for pixel coordinates)
and a PNG overlay (at most ``--overlay-size`` px). Scenes without a CRS (PNG, JPEG) give pixel coordinates.

CLI: ``python -m modeling_georsclip.localize --model M --scene SCENE --query TEXT [--query TEXT ...]
[--bands 4,3,2] [--preset NAME] [--window-sizes 256,512,768] [--map-scale N] [--geojson-crs EPSG:4326]
[--top-k K] --output DIR``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio
import rasterio.features
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window

from .evaluation.selo import (
    CROP_SIZE,
    MEDIAN_KERNEL,
    WINDOW_SIZES,
    HeatGrid,
    gray_levels,
    heat_grid,
    selo_windows,
    write_overlay,
)
from .geo import (
    SceneSource,
    add_scene_arguments,
    affine_geometry,
    as_scene,
    block_mean,
    bounded_gdal_cache,
    embed_scene_windows,
    geojson_document,
    geotiff_profile,
    parse_crs,
    parse_int_list,
    preview_factor,
    read_preview,
    reproject_geometry,
    scaled_transform,
    scene_bands,
    slugify,
    staged_output,
)
from .inference import ModelLoadError, PrecisionError, load_model
from .log import get_logger
from .modeling import GeoRSCLIPModel
from .processing import GeoRSCLIPProcessor
from .raster import RasterError, RasterScene

logger = get_logger(__name__)

HALO = MEDIAN_KERNEL // 2  # rows a strip needs above and below for an exact median blur
STRIP_PIXELS = 8_000_000  # pixels per strip (~90 MB of buffers): 800 rows of a 10,000 px wide scene
THRESHOLD = 0.7
TOP_K = 5
OVERLAY_SIDE = 2048
_TO_PROB = (np.arange(256) / 255.0).astype(np.float32)  # selo's gray / 255.0, rounded to float32 once


@dataclass
class HeatMap:
    """One query's SeLo map over a scene, kept compact (per grid cell) until painted.

    ``probability(scale)`` returns the float32 map (0..1) as an array; ``profile(scale)`` the rasterio
    profile that places it; ``gray_strips`` yields the 8-bit blurred map by strips for huge scenes.
    """

    query: str
    grid: HeatGrid
    crs: CRS | None
    transform: Affine
    windows: np.ndarray
    scores: np.ndarray  # cosine similarity of each window's crop to the query

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    def gray_strips(self, strip_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, rows)`` of selo's blurred 8-bit map, each strip blurred with a ``HALO`` margin."""
        height = self.shape[0]
        levels = gray_levels(self.grid.cells)
        for start in range(0, height, strip_rows):
            stop = min(start + strip_rows, height)
            low, high = max(0, start - HALO), min(height, stop + HALO)
            blurred = cv2.medianBlur(self.grid.expand(levels, (low, high)), MEDIAN_KERNEL)
            yield start, blurred[start - low : stop - low]

    def map_shape(self, scale: int = 1) -> tuple[int, int]:
        return -(-self.shape[0] // scale), -(-self.shape[1] // scale)

    def probability(self, scale: int = 1) -> np.ndarray:
        """The float32 probability map (0..1), ``scale`` times coarser (block means) when scale > 1."""
        rows = _strip_rows(self.shape[1], scale)
        return np.concatenate([_to_probability(strip, scale) for _, strip in self.gray_strips(rows)])

    def profile(self, scale: int = 1) -> dict[str, Any]:
        """rasterio profile of ``probability(scale)``: float32, tiled, compressed, the scene's CRS."""
        height, width = self.map_shape(scale)
        return geotiff_profile(width, height, "float32", self.crs, scaled_transform(self.transform, scale))


def _strip_rows(width: int, *factors: int) -> int:
    """Strip height: a multiple of every block factor, about STRIP_PIXELS / width (256..4096 rows)."""
    step = math.lcm(*factors)
    return step * max(1, round(min(max(STRIP_PIXELS // max(width, 1), 256), 4096) / step))


def _to_probability(gray: np.ndarray, scale: int) -> np.ndarray:
    return _TO_PROB[gray] if scale == 1 else (block_mean(gray, scale) / 255.0).astype(np.float32)


def localize_scene(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    scene: SceneSource,
    queries: Sequence[str],
    window_sizes: Sequence[int] = WINDOW_SIZES,
    batch_size: int = 32,
    progress: bool = False,
    bands: Sequence[int] | None = None,
    preset: str | None = None,
) -> list[HeatMap]:
    """One HeatMap per query; the scene's crops are read window by window and embedded once for all queries.

    ``scene`` is an open RasterScene, a raster path or bytes (opened with ``bands``/``preset``), or an RGB
    array / PIL image (pixel coordinates). Raises ValueError when the scene is smaller than every window.
    """
    if not queries:
        raise ValueError("localize needs at least one query")
    with as_scene(scene, bands, preset) as opened, bounded_gdal_cache():
        windows = selo_windows(opened.height, opened.width, window_sizes)
        crops = embed_scene_windows(model, processor, opened, windows, CROP_SIZE, batch_size, progress, "SeLo crops")
        texts = model.text_embeddings(list(queries), processor)
        scores = (crops @ texts.T).numpy()
        shape = (opened.height, opened.width)
        return [HeatMap(query, heat_grid(scores[:, i], windows, shape), opened.crs, opened.transform, windows,
                        scores[:, i]) for i, query in enumerate(queries)]


def write_heat_map(heat: HeatMap, path: Path, scale: int = 1, preview_side: int = OVERLAY_SIDE,
                   tags: dict[str, str] | None = None) -> np.ndarray:
    """Write the probability GeoTIFF strip by strip; return the 8-bit map at preview size (<= preview_side)."""
    factor = preview_factor(heat.shape, preview_side)
    profile = heat.profile(scale)
    preview = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            for start, strip in heat.gray_strips(_strip_rows(heat.shape[1], scale, factor)):
                data = _to_probability(strip, scale)
                dst.write(data, 1, window=Window(0, start // scale, profile["width"], data.shape[0]))
                preview.append(block_mean(strip, factor))
            dst.set_band_description(1, "probability")
            dst.update_tags(QUERY=heat.query, METHOD="SeLo heat map (clean mode), GeoRSCLIP", **(tags or {}))
    return np.rint(np.concatenate(preview)).astype(np.uint8)


def top_regions(prob: np.ndarray, threshold: float = THRESHOLD, top_k: int = TOP_K) -> list[tuple[dict, dict]]:
    """The ``top_k`` connected areas where ``prob >= threshold * prob.max()``, best mean probability first,
    as ``(polygon in pixel coordinates of prob, properties)``."""
    peak = float(prob.max())
    if peak <= 0 or top_k <= 0:
        return []
    mask = (prob >= threshold * peak).astype(np.uint8)
    count, labels = cv2.connectedComponents(mask, connectivity=4)
    flat, values = labels.ravel(), prob.ravel()
    sizes = np.bincount(flat, minlength=count)
    means = np.bincount(flat, weights=values, minlength=count) / np.maximum(sizes, 1)
    maxima = np.zeros(count)
    np.maximum.at(maxima, flat, values)
    chosen = [int(label) for label in np.argsort(-means[1:], kind="stable")[:top_k] + 1]
    geometries: dict[int, list] = {}
    for geometry, value in rasterio.features.shapes(labels, mask=np.isin(labels, chosen), connectivity=4):
        geometries.setdefault(int(value), []).append(geometry["coordinates"])
    regions = []
    for rank, label in enumerate(chosen, start=1):
        parts = geometries[label]
        geometry = ({"type": "Polygon", "coordinates": parts[0]} if len(parts) == 1
                    else {"type": "MultiPolygon", "coordinates": parts})
        regions.append((geometry, {"rank": rank, "score": round(float(means[label]), 6),
                                   "max_probability": round(float(maxima[label]), 6), "pixels": int(sizes[label])}))
    return regions


def write_query_outputs(
    heat: HeatMap,
    scene_preview: np.ndarray,
    folder: Path,
    stem: str,
    map_scale: int = 1,
    geojson_crs: CRS | None = None,
    threshold: float = THRESHOLD,
    top_k: int = TOP_K,
    tags: dict[str, str] | None = None,
    overlay_side: int = OVERLAY_SIDE,
) -> dict[str, Any]:
    """``stem``.tif, .geojson and .png for one query in ``folder``; returns a summary of what was written.

    ``scene_preview`` is ``geo.read_preview(scene, overlay_side)`` (read once for all queries).
    """
    height, width = heat.shape
    gray = write_heat_map(heat, folder / f"{stem}.tif", map_scale, overlay_side, tags)
    to_scene = Affine.scale(width / gray.shape[1], height / gray.shape[0])  # preview pixel -> scene pixel
    regions = top_regions(gray / 255.0, threshold, top_k)
    out_crs = geojson_crs or heat.crs
    features = []
    for geometry, properties in regions:
        placed = affine_geometry(geometry, heat.transform @ to_scene)
        if geojson_crs is not None and heat.crs is not None and geojson_crs != heat.crs:
            placed = reproject_geometry(placed, heat.crs, geojson_crs)
        properties = {**properties, "pixels": int(round(properties["pixels"] * to_scene.a * to_scene.e))}
        features.append({"type": "Feature", "properties": {"query": heat.query, **properties}, "geometry": placed})
    document = geojson_document(features, out_crs, query=heat.query, threshold=threshold)
    (folder / f"{stem}.geojson").write_text(json.dumps(document) + "\n", encoding="utf-8")
    rings = [np.asarray(g["coordinates"][0] if g["type"] == "Polygon" else g["coordinates"][0][0])
             for g, _ in regions]
    if scene_preview.shape[:2] != gray.shape:  # a preview read for another size
        scene_preview = cv2.resize(scene_preview, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_AREA)
    write_overlay(folder / f"{stem}.png", scene_preview, gray, regions=rings, title=heat.query)
    return {"query": heat.query, "files": [f"{stem}.tif", f"{stem}.geojson", f"{stem}.png"],
            "regions": len(features), "best_window_score": float(heat.scores.max())}


def check_reprojectable(scene: RasterScene, geojson_crs: CRS | None) -> None:
    """RasterError naming the CRS and the scene when a reprojection is asked of a scene without a CRS."""
    if geojson_crs is not None and scene.crs is None:
        raise RasterError(f"--geojson-crs {geojson_crs.to_string()}: scene {scene.path} has no CRS "
                          "(pixel coordinates cannot be reprojected)")


def localize_to_folder(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    scene: RasterScene,
    queries: Sequence[str],
    output: str | os.PathLike,
    window_sizes: Sequence[int] = WINDOW_SIZES,
    map_scale: int = 1,
    geojson_crs: CRS | None = None,
    threshold: float = THRESHOLD,
    top_k: int = TOP_K,
    overlay_side: int = OVERLAY_SIDE,
    batch_size: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run ``localize_scene`` and write every query's outputs into ``output`` (all or nothing)."""
    check_reprojectable(scene, geojson_crs)
    heat_maps = localize_scene(model, processor, scene, queries, window_sizes, batch_size, progress)
    tags = {"WINDOW_SIZES": ",".join(map(str, window_sizes)), "MAP_SCALE": str(map_scale)}
    digits = len(str(len(queries)))
    summary = []
    with bounded_gdal_cache(), staged_output(output) as stage:
        scene_preview = read_preview(scene, overlay_side)
        for number, heat in enumerate(heat_maps, start=1):
            stem = f"{number:0{digits}d}_{slugify(heat.query)}"
            summary.append(write_query_outputs(heat, scene_preview, stage, stem, map_scale, geojson_crs,
                                               threshold, top_k, tags, overlay_side))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="GeoRSCLIP semantic localization: text queries -> georeferenced "
                                                 "probability maps (GeoTIFF), top regions (GeoJSON), overlays (PNG)")
    add_scene_arguments(parser)
    parser.add_argument("--query", action="append", required=True, help="text query; repeat for several")
    parser.add_argument("--window-sizes", default=",".join(map(str, WINDOW_SIZES)), help="window sizes in pixels")
    parser.add_argument("--map-scale", type=int, default=1, help="write the GeoTIFF N times coarser (default 1)")
    parser.add_argument("--geojson-crs", default=None, help="reproject the GeoJSON, e.g. EPSG:4326 (RFC 7946)")
    parser.add_argument("--top-k", type=int, default=TOP_K, help="regions per query in the GeoJSON")
    parser.add_argument("--threshold", type=float, default=THRESHOLD,
                        help="regions are areas at or above this fraction of the map's peak")
    parser.add_argument("--overlay-size", type=int, default=OVERLAY_SIDE, help="longest side of the PNG overlay")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        window_sizes = parse_int_list(args.window_sizes, "--window-sizes")
        bands = scene_bands(args)
        if min(window_sizes) <= 0 or args.map_scale < 1 or args.top_k < 0 or not 0 < args.threshold <= 1:
            raise ValueError("--window-sizes and --map-scale must be positive, --top-k >= 0, 0 < --threshold <= 1")
        geojson_crs = parse_crs(args.geojson_crs) if args.geojson_crs else None
        with as_scene(args.scene, bands, args.preset) as scene:
            check_reprojectable(scene, geojson_crs)
            if min(window_sizes) > min(scene.height, scene.width):  # fail before the model loads
                raise ValueError(f"--window-sizes {args.window_sizes}: scene {args.scene} is only "
                                 f"{scene.width}x{scene.height} pixels, smaller than every window")
            model, processor = load_model(args.model, precision=args.precision)
            summary = localize_to_folder(model, processor, scene, args.query, args.output, window_sizes,
                                         args.map_scale, geojson_crs, args.threshold, args.top_k, args.overlay_size,
                                         args.batch_size)
    except (RasterError, ModelLoadError, PrecisionError, ValueError, OSError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps({"output": str(args.output), "queries": summary}, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
