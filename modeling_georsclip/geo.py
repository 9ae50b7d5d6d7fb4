"""What ``localize`` and ``classify_tiles`` share: embedding windows read from a raster, and georeferenced outputs.

Windows are ``(row0, row1, col0, col1)`` pixel ranges (the layout ``evaluation.selo.selo_windows`` returns);
each is read from disk on its own through the raster reader at the model's crop size, so a scene is never
loaded whole. Outputs (GeoTIFF, GeoJSON, PNG) are written into a staging folder and moved into the output
folder only when every file of the run is complete.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import io
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from tqdm.auto import tqdm

from .inference import add_precision_argument
from .modeling import GeoRSCLIPModel
from .processing import GeoRSCLIPProcessor
from .raster import RasterError, RasterScene, open_scene

SceneSource = RasterScene | str | os.PathLike | bytes | np.ndarray | Image.Image
# GDAL's block cache defaults to 5 % of the machine's RAM and holds every block read or written until full: on a
# big scene that is hundreds of MB of RSS for no gain (windows are read in order, each block is reused by the
# next few windows only). 64 MB keeps a column of 512 px blocks of a 20,000 px scene.
GDAL_CACHE_BYTES = 64 * 2**20
PREVIEW_CHUNK_ROWS = 256  # output rows per read of the scene preview (bounds the 8-bit conversion's buffers)


def bounded_gdal_cache() -> rasterio.Env:
    """A rasterio environment whose GDAL block cache is capped at GDAL_CACHE_BYTES (reads and writes)."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


@contextlib.contextmanager
def as_scene(source: SceneSource, bands: Sequence[int] | None = None, preset: str | None = None
             ) -> Iterator[RasterScene]:
    """``source`` as an open RasterScene: a scene passes through (left open), a path/bytes is opened and
    closed, an HxWx3 uint8 array or PIL image is read through the same reader (as an in-memory PNG)."""
    if isinstance(source, RasterScene):
        yield source
        return
    if isinstance(source, (np.ndarray, Image.Image)):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(source)).convert("RGB").save(buffer, format="PNG")
        source = buffer.getvalue()
    with open_scene(source, bands=bands, preset=preset) as scene:
        yield scene


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own symbols, libc's included
    except (OSError, TypeError):  # Windows: CDLL(None) is not supported
        return None


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).

    Why by hand (no library does it): each batch allocates ~20 MB pixel tensors in the reader thread and
    activations in the main thread; glibc's adaptive mmap threshold soon serves such blocks from its heaps,
    where freed blocks fragment and stay resident. On a 10,000 px scene with ViT-B-32 that grew RSS by ~1.4 GiB
    over a run; trimming after every batch keeps the growth near the live working set, at no measurable cost.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def read_window(scene: RasterScene, window: Sequence[int], crop_size: int) -> Image.Image:
    """Window ``(row0, row1, col0, col1)`` of ``scene`` resampled to ``crop_size`` squared, as RGB."""
    row0, row1, col0, col1 = (int(v) for v in window)
    return Image.fromarray(scene.read_rgb((col0, row0, col1 - col0, row1 - row0), out_size=(crop_size, crop_size)))


@torch.no_grad()
def embed_scene_windows(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    scene: RasterScene,
    windows: np.ndarray,
    crop_size: int,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "crops",
) -> torch.Tensor:
    """Unit-norm embeddings (n_windows, D) of the scene's windows, each read from disk at ``crop_size``.

    One helper thread reads and preprocesses the next batch while the model runs on the current one
    (GDAL, PIL and torch release the GIL); only that thread touches the dataset handle.
    """

    def prepare(start: int) -> torch.Tensor:
        crops = [read_window(scene, w, crop_size) for w in windows[start : start + batch_size]]
        return processor(images=crops, return_tensors="pt")["pixel_values"]

    if len(windows) == 0:
        return torch.empty(0, model.config.projection_dim)
    chunks = []
    starts = list(range(0, len(windows), batch_size))
    with ThreadPoolExecutor(max_workers=1) as pool, \
            tqdm(total=len(windows), desc=desc, unit="crop", disable=not progress) as bar:
        pending = pool.submit(prepare, starts[0])
        for number in range(len(starts)):
            pixels = pending.result()
            if number + 1 < len(starts):
                pending = pool.submit(prepare, starts[number + 1])
            chunks.append(model.image_embeddings(pixels, batch_size=len(pixels)))
            bar.update(len(pixels))
            del pixels
            release_free_heap()
    return torch.cat(chunks)


def read_preview(scene: RasterScene, max_side: int) -> np.ndarray:
    """The whole scene as RGB, ``preview_factor`` times smaller (ceil sizes), read in bands of rows so that a
    big preview never converts the scene in one piece (GDAL takes the overviews)."""
    factor = preview_factor((scene.height, scene.width), max_side)
    width, height = -(-scene.width // factor), -(-scene.height // factor)
    chunks = []
    for out_row in range(0, height, PREVIEW_CHUNK_ROWS):
        row = out_row * factor
        rows = min(PREVIEW_CHUNK_ROWS * factor, scene.height - row)
        out_rows = min(PREVIEW_CHUNK_ROWS, height - out_row)
        chunks.append(scene.read_rgb((0, row, scene.width, rows), out_size=(width, out_rows)))
    return np.concatenate(chunks)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks (float64, ceil(H/f) x ceil(W/f)); edge blocks average the
    pixels they have. Zero padding plus a buffered uint32/float64 sum: no full-size wide copy of the input."""
    if factor == 1:
        return array.astype(np.float64)
    height, width = array.shape
    rows, cols = -(-height // factor), -(-width // factor)
    padded = np.zeros((rows * factor, cols * factor), dtype=array.dtype)
    padded[:height, :width] = array
    dtype = np.uint32 if array.dtype.kind in "ub" and array.dtype.itemsize <= 2 else np.float64
    sums = padded.reshape(rows, factor, cols, factor).sum(axis=(1, 3), dtype=dtype)
    row_n = np.minimum(factor, height - np.arange(rows) * factor)
    col_n = np.minimum(factor, width - np.arange(cols) * factor)
    return sums / np.outer(row_n, col_n)


def preview_factor(shape: tuple[int, int], max_side: int) -> int:
    """The smallest integer decimation that brings the longest side of ``shape`` to ``max_side`` or less."""
    return max(1, math.ceil(max(shape) / max(1, max_side)))


def scaled_transform(transform: Affine, factor: float, shape: tuple[int, int] | None = None,
                     out_shape: tuple[int, int] | None = None) -> Affine:
    """Geotransform of a map ``factor`` times coarser (or, with shapes, exactly covering the same bounds)."""
    if shape is not None and out_shape is not None:
        return transform @ Affine.scale(shape[1] / out_shape[1], shape[0] / out_shape[0])
    return transform @ Affine.scale(factor)


def geotiff_profile(width: int, height: int, dtype: str, crs: CRS | None, transform: Affine, **extra) -> dict:
    """A tiled, DEFLATE-compressed single-band GeoTIFF profile (predictor chosen for the dtype)."""
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype=dtype, crs=crs, transform=transform,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                   predictor=3 if np.dtype(dtype).kind == "f" else 2, BIGTIFF="IF_SAFER")
    profile.update(extra)
    return profile


def parse_crs(value: str) -> CRS:
    """``value`` (``EPSG:4326``, WKT, PROJ string) as a CRS; RasterError naming it when it is not one."""
    try:
        return CRS.from_user_input(value)
    except (CRSError, ValueError, TypeError) as err:
        raise RasterError(f"unknown CRS {value!r}: {err}") from None


def is_wgs84(crs: CRS | None) -> bool:
    """WGS 84 geographic coordinates (what RFC 7946 GeoJSON holds, written lon/lat)."""
    return crs is not None and (crs.to_epsg() == 4326 or crs.to_string() == "OGC:CRS84")


def crs_member(crs: CRS | None) -> dict | None:
    """The GeoJSON 2008 ``crs`` member for ``crs``: a named CRS (OGC URN for EPSG codes, else WKT), or null
    for pixel coordinates ("no CRS can be assumed"). RFC 7946 files (WGS 84 lon/lat) carry no member."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def geojson_document(features: list[dict], crs: CRS | None, **members: Any) -> dict:
    """A FeatureCollection in ``crs``: RFC 7946 (no ``crs`` member) for WGS 84, else a GeoJSON 2008 member."""
    document: dict[str, Any] = {"type": "FeatureCollection"}
    if not is_wgs84(crs):
        document["crs"] = crs_member(crs)
    document.update(members)
    document["features"] = features
    return document


def reproject_geometry(geometry: dict, src: CRS, dst: CRS) -> dict:
    """``geometry`` from ``src`` to ``dst`` (lon/lat order for WGS 84, cut at the antimeridian)."""
    return transform_geom(src, dst, geometry, antimeridian_cutting=True)


def affine_geometry(geometry: dict, transform: Affine) -> dict:
    """``geometry`` (pixel coordinates, as rasterio.features.shapes gives them) mapped through ``transform``."""

    def ring(points):
        return [list(transform @ (float(x), float(y))) for x, y in points]

    if geometry["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": [ring(r) for r in geometry["coordinates"]]}
    if geometry["type"] == "MultiPolygon":
        return {"type": "MultiPolygon", "coordinates": [[ring(r) for r in p] for p in geometry["coordinates"]]}
    raise ValueError(f"unsupported geometry type {geometry['type']}")


def slugify(text: str, max_length: int = 40) -> str:
    """A file-name-safe lower-case slug of ``text`` ("query" when nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_length].strip("-")
    return slug or "query"


def add_scene_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every scene command shares (model, scene, bands, preset, batch, output, precision)."""
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--scene", required=True, help="raster (GeoTIFF, COG, PNG, JPEG, ...) of any size")
    parser.add_argument("--bands", default=None, help="1-based bands read as R,G,B (e.g. 4,3,2), or one band")
    parser.add_argument("--preset", default=None, help="radiometric preset (sentinel2-l2a, landsat-c2l2, naip, "
                                                       "uint8, percentile, linear:LO,HI); default by dtype")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", required=True, help="output folder (created; files are added to it)")
    add_precision_argument(parser, "auto")


def scene_bands(args: argparse.Namespace) -> list[int] | None:
    """``--bands`` as 1-based band numbers (None: the reader's default)."""
    return parse_int_list(args.bands, "--bands") if args.bands else None


def parse_int_list(text: str, name: str) -> list[int]:
    """``"4,3,2"`` -> ``[4, 3, 2]``; ValueError naming the option and value otherwise."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} {text!r}: expected comma-separated integers") from None
    if not values:
        raise ValueError(f"{name} {text!r}: expected comma-separated integers")
    return values


@contextlib.contextmanager
def staged_output(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files are moved into ``final`` (created if needed).

    Nothing appears in ``final`` until the whole run succeeded (on error the staging folder is removed and a
    ``final`` created for it is removed too). Files already in ``final`` are kept unless a new file of the
    same name replaces them: the folder may be one the user keeps other things in.
    """
    final = Path(final)
    created = not final.exists()
    try:
        final.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=final))
    except OSError as err:
        raise OSError(f"cannot write output folder {final}: {err.strerror or err}") from err
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            os.chmod(item, 0o644)
            os.replace(item, final / item.name)
    except BaseException:
        if created:
            shutil.rmtree(final, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
