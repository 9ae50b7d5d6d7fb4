"""Zero-shot land-cover map from text labels: every tile of a scene classified with the RS template ensemble.

The scene is cut into a grid of ``--tile`` x ``--tile`` pixel cells. Each cell is classified from one crop:
the cell itself, or for the last row/column of a scene whose size is not a multiple of the tile, the full
tile-sized window that ends at the scene's edge (so every crop is square). Crops are read from disk one by
one at 256 px at most (overviews for big tiles), embedded, and scored against a zero-shot head built from
``evaluation/templates.py``'s 105 remote-sensing templates (``model.zero_shot_head(..., mode="paper")``);
probabilities are the softmax of the scaled cosine logits. Cells with less than ``--min-valid`` valid (not
nodata) pixels are left unclassified.

Outputs in ``--output``:
- ``tiles.geojson``: one polygon per classified cell (the cell clipped to the scene) with ``label``,
  ``score`` (its probability) and ``p_<label>`` for every label, in the scene's CRS (GeoJSON 2008 ``crs``
  member; ``"crs": null`` for pixel coordinates). ``tiles.parquet`` (GeoParquet) too where geopandas is
  installed.
- ``classes.tif``: uint8 class index per cell (one pixel per tile; geotransform = the scene's scaled by the
  tile, so its last row/column may reach past the scene's edge), with a colour table; 255 = unclassified.
- ``classes.png``: the scene with the cells coloured by class and a legend.

CLI: ``python -m modeling_georsclip.classify_tiles --model M --scene SCENE --labels "airport,farmland,..."
--tile 256 [--bands 4,3,2] [--preset NAME] [--precision auto] --output DIR``
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from .evaluation.selo import CROP_SIZE
from .evaluation.templates import RS_TEMPLATES
from .geo import (
    SceneSource,
    add_scene_arguments,
    affine_geometry,
    as_scene,
    bounded_gdal_cache,
    embed_scene_windows,
    geojson_document,
    geotiff_profile,
    read_preview,
    scaled_transform,
    scene_bands,
    staged_output,
)
from .inference import ModelLoadError, PrecisionError, load_model
from .log import get_logger
from .modeling import GeoRSCLIPModel
from .processing import GeoRSCLIPProcessor
from .raster import RasterError, RasterScene

logger = get_logger(__name__)

UNCLASSIFIED = 255
MAX_LABELS = 255
MIN_VALID = 0.5
PREVIEW_SIDE = 2048
MASK_SIDE = 32  # a cell's valid fraction is measured on a decimated mask: up to 32 x 32 samples per cell
MASK_MAX_SIDE = 2048  # longest side of that mask read
# Qualitative colours (Tableau 20 order), cycled for more labels.
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229)], dtype=np.uint8)


@dataclass
class TileClassification:
    """Per-cell results on a ``rows`` x ``cols`` grid of ``tile``-pixel cells (row-major order)."""

    labels: list[str]
    tile: int
    shape: tuple[int, int]  # scene (height, width)
    crs: CRS | None
    transform: Affine
    classified: np.ndarray  # (n_cells,) bool: enough valid pixels to classify
    probabilities: np.ndarray  # (n_cells, n_labels) float32; rows of unclassified cells are 0

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.shape[0] // self.tile), -(-self.shape[1] // self.tile)

    def class_map(self) -> np.ndarray:
        """(rows, cols) uint8 class index per cell, UNCLASSIFIED where no class was given."""
        index = np.where(self.classified, self.probabilities.argmax(axis=1), UNCLASSIFIED)
        return index.astype(np.uint8).reshape(self.grid)

    def cell_bounds(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Pixel ``(row0, row1, col0, col1)`` of a cell, clipped to the scene."""
        height, width = self.shape
        return (row * self.tile, min((row + 1) * self.tile, height),
                col * self.tile, min((col + 1) * self.tile, width))


def parse_labels(text: str | Sequence[str]) -> list[str]:
    """``"airport, farmland"`` -> ``["airport", "farmland"]``; ValueError for none, duplicates or > 255."""
    labels = [part.strip() for part in (text.split(",") if isinstance(text, str) else text)]
    labels = [label for label in labels if label]
    if not labels:
        raise ValueError(f"--labels {text!r}: give at least one label (comma-separated)")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"--labels: duplicate label {duplicates[0]!r}")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"--labels: {len(labels)} labels, at most {MAX_LABELS} fit the uint8 class map")
    return labels


def tile_windows(height: int, width: int, tile: int) -> np.ndarray:
    """(rows * cols, 4) crop windows ``(row0, row1, col0, col1)``, row-major; edge cells' windows are moved
    back inside the scene so that every crop is a full tile (or the whole side of a smaller scene)."""
    def starts(size: int) -> np.ndarray:
        first = np.arange(0, size, tile)
        return np.minimum(first, max(size - tile, 0))

    row0, col0 = np.meshgrid(starts(height), starts(width), indexing="ij")
    row0, col0 = row0.ravel(), col0.ravel()
    return np.stack([row0, np.minimum(row0 + tile, height), col0, np.minimum(col0 + tile, width)], axis=1)


def valid_fractions(scene: RasterScene, tile: int) -> np.ndarray:
    """Fraction of valid pixels of each cell (row-major), from one decimated mask read of the whole scene."""
    rows, cols = -(-scene.height // tile), -(-scene.width // tile)
    side = max(1, min(MASK_SIDE, MASK_MAX_SIDE // max(rows, cols)))  # mask pixels per cell side
    size = (cols * side, rows * side)
    if size[0] >= scene.width or size[1] >= scene.height:
        size = (scene.width, scene.height)  # small scenes: the mask at full resolution
    mask = scene.valid_mask(out_size=size).astype(np.float64)
    height, width = mask.shape
    row_edges = np.minimum(np.round(np.arange(rows + 1) * tile * height / scene.height).astype(int), height)
    col_edges = np.minimum(np.round(np.arange(cols + 1) * tile * width / scene.width).astype(int), width)
    sums = np.add.reduceat(np.add.reduceat(mask, row_edges[:-1], axis=0), col_edges[:-1], axis=1)
    counts = np.outer(np.diff(row_edges), np.diff(col_edges))
    return (sums / np.maximum(counts, 1)).ravel()


def classify_scene(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    scene: SceneSource,
    labels: Sequence[str],
    tile: int = 256,
    templates: Sequence[str] = RS_TEMPLATES,
    min_valid: float = MIN_VALID,
    batch_size: int = 32,
    progress: bool = False,
    bands: Sequence[int] | None = None,
    preset: str | None = None,
) -> TileClassification:
    """Classify every ``tile`` x ``tile`` cell of ``scene`` among ``labels`` (zero-shot, RS templates)."""
    if tile <= 0:
        raise ValueError(f"--tile {tile}: must be a positive number of pixels")
    labels = parse_labels(labels)
    head = model.zero_shot_head(labels, list(templates), processor, mode="paper")
    with as_scene(scene, bands, preset) as opened, bounded_gdal_cache():
        windows = tile_windows(opened.height, opened.width, tile)
        classified = valid_fractions(opened, tile) >= max(min_valid, 1e-9)
        embeds = embed_scene_windows(model, processor, opened, windows[classified], min(tile, CROP_SIZE),
                                     batch_size, progress, "tiles")
        probabilities = np.zeros((len(windows), len(labels)), dtype=np.float32)
        if len(embeds):
            probabilities[classified] = model.zero_shot_logits(embeds, head).softmax(dim=-1).numpy()
        return TileClassification(labels, tile, (opened.height, opened.width), opened.crs, opened.transform,
                                  classified, probabilities)


def tile_features(result: TileClassification) -> list[dict[str, Any]]:
    """GeoJSON features of the classified cells, in the scene's CRS (pixel coordinates without one)."""
    features = []
    rows, cols = result.grid
    for index in np.flatnonzero(result.classified):
        row, col = divmod(int(index), cols)
        row0, row1, col0, col1 = result.cell_bounds(row, col)
        ring = [(col0, row0), (col1, row0), (col1, row1), (col0, row1), (col0, row0)]
        geometry = affine_geometry({"type": "Polygon", "coordinates": [ring]}, result.transform)
        probs = result.probabilities[index]
        best = int(probs.argmax())
        properties = {"row": row, "col": col, "label": result.labels[best], "label_index": best,
                      "score": round(float(probs[best]), 6)}
        properties.update({f"p_{label}": round(float(p), 6) for label, p in zip(result.labels, probs, strict=True)})
        features.append({"type": "Feature", "properties": properties, "geometry": geometry})
    return features


def colour_table(n_labels: int) -> dict[int, tuple[int, int, int, int]]:
    """rasterio colour map: a palette colour per class index, black-transparent for UNCLASSIFIED."""
    table = {i: (*(int(c) for c in PALETTE[i % len(PALETTE)]), 255) for i in range(n_labels)}
    table[UNCLASSIFIED] = (0, 0, 0, 0)
    return table


def write_class_tif(result: TileClassification, path: Path) -> None:
    """uint8 class map (one pixel per cell) with a colour table and the labels as tags."""
    rows, cols = result.grid
    profile = geotiff_profile(cols, rows, "uint8", result.crs, scaled_transform(result.transform, result.tile),
                              nodata=UNCLASSIFIED, photometric="palette")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(result.class_map(), 1)
            dst.write_colormap(1, colour_table(len(result.labels)))
            dst.set_band_description(1, "class index")
            dst.update_tags(LABELS=json.dumps(result.labels), TILE=str(result.tile),
                            METHOD="GeoRSCLIP zero-shot, RS template ensemble (paper head)")


def write_class_png(result: TileClassification, scene_preview: np.ndarray, path: Path) -> None:
    """The scene with each cell tinted by its class colour (unclassified cells untinted) and a legend."""
    height, width = scene_preview.shape[:2]
    rows = np.minimum((np.arange(height) * result.shape[0] / height) // result.tile, result.grid[0] - 1).astype(int)
    cols = np.minimum((np.arange(width) * result.shape[1] / width) // result.tile, result.grid[1] - 1).astype(int)
    class_map = result.class_map()
    classes = class_map[rows][:, cols]
    colours = PALETTE[classes % len(PALETTE)]
    tinted = np.where((classes == UNCLASSIFIED)[..., None], scene_preview,
                      (0.45 * scene_preview + 0.55 * colours).astype(np.uint8))
    scale = max(0.45, min(1.0, height / 900))
    line = int(30 * scale) + 6
    legend = np.full((max(height, line * (len(result.labels) + 1)), int(320 * scale) + 20, 3), 255, np.uint8)
    for i, label in enumerate(result.labels):
        top = 10 + i * line
        cv2.rectangle(legend, (10, top), (10 + line - 8, top + line - 8), tuple(int(c) for c in PALETTE[i % len(PALETTE)]), -1)
        count = int((class_map == i).sum())
        cv2.putText(legend, f"{label} ({count})", (line + 12, top + line - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    canvas = np.full((legend.shape[0], width + legend.shape[1], 3), 255, np.uint8)
    canvas[:height, :width] = tinted
    canvas[:, width:] = legend
    ok, encoded = cv2.imencode(".png", canvas[..., ::-1])
    if not ok:
        raise RuntimeError(f"OpenCV could not PNG-encode {path}")
    path.write_bytes(encoded.tobytes())


def write_geoparquet(features: list[dict[str, Any]], crs: CRS | None, path: Path) -> bool:
    """GeoParquet of the tiles where geopandas is installed (it is optional); True when written."""
    try:
        import geopandas
    except ImportError:
        logger.info("geopandas is not installed: no GeoParquet (pip install \"georsclip[geo]\")")
        return False
    frame = geopandas.GeoDataFrame.from_features(features, crs=crs.to_wkt() if crs else None)
    frame.to_parquet(path)
    return True


def classify_to_folder(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    scene: RasterScene,
    labels: Sequence[str],
    output: str | os.PathLike,
    tile: int = 256,
    min_valid: float = MIN_VALID,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``classify_scene`` and write tiles.geojson (+ .parquet), classes.tif and classes.png (all or nothing)."""
    result = classify_scene(model, processor, scene, labels, tile, min_valid=min_valid, batch_size=batch_size,
                            progress=progress)
    features = tile_features(result)
    with bounded_gdal_cache(), staged_output(output) as stage:
        preview = read_preview(scene, PREVIEW_SIDE)
        document = geojson_document(features, result.crs, labels=result.labels, tile=tile)
        (stage / "tiles.geojson").write_text(json.dumps(document) + "\n", encoding="utf-8")
        parquet = write_geoparquet(features, result.crs, stage / "tiles.parquet")
        write_class_tif(result, stage / "classes.tif")
        write_class_png(result, preview, stage / "classes.png")
    counts = np.bincount(result.class_map().ravel(), minlength=256)
    return {"output": str(output), "tiles": int(result.classified.size), "classified": int(result.classified.sum()),
            "counts": {label: int(counts[i]) for i, label in enumerate(result.labels)},
            "files": ["tiles.geojson", *(["tiles.parquet"] if parquet else []), "classes.tif", "classes.png"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="GeoRSCLIP zero-shot tile classification of a scene: a land-cover "
                                                 "map from text labels (GeoJSON, GeoTIFF and PNG)")
    add_scene_arguments(parser)
    parser.add_argument("--labels", required=True, help='comma-separated class names, e.g. "airport,farmland"')
    parser.add_argument("--tile", type=int, default=256, help="tile size in pixels (default 256)")
    parser.add_argument("--min-valid", type=float, default=MIN_VALID,
                        help="cells with a smaller fraction of valid (not nodata) pixels stay unclassified")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        labels = parse_labels(args.labels)
        bands = scene_bands(args)
        if args.tile <= 0 or not 0 <= args.min_valid <= 1:
            raise ValueError(f"--tile {args.tile} must be positive and --min-valid {args.min_valid} within 0..1")
        with as_scene(args.scene, bands, args.preset) as scene:
            model, processor = load_model(args.model, precision=args.precision)
            summary = classify_to_folder(model, processor, scene, labels, args.output, args.tile, args.min_valid,
                                         args.batch_size)
    except (RasterError, ModelLoadError, PrecisionError, ValueError, OSError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
