"""Read any raster (any band count, dtype, size) as the 8-bit RGB a CLIP model sees, with rasterio.

Remote-sensing users hold GeoTIFFs and COGs: 4- to 13-band uint16 reflectance, int16 with negative
values, float32, nodata borders, scenes of 20,000 x 20,000 pixels. rasterio (GDAL) reads them, by window
and from overviews, but no library turns them into a true-colour 8-bit image, so this module does that
last step with documented radiometric presets:

- ``sentinel2-l2a``: Copernicus Sentinel-2 Level-2A surface reflectance, processing baseline >= 04.00
  (every product since 25 January 2022 and the Collection-1 reprocessing): reflectance =
  (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE with BOA_ADD_OFFSET = -1000 and 10,000 (ESA,
  https://sentinels.copernicus.eu/web/sentinel/-/copernicus-sentinel-2-major-products-upgrade-upcoming;
  the values are in each product's MTD_MSIL2A.xml). With 12 or 13 bands the default bands are B4, B3, B2
  = ``(4, 3, 2)`` in the standard band order (B1, B2, B3, B4, B5, ...; L2A has no B10).
- ``sentinel2-l2a-legacy``: baselines < 04.00 and "harmonised" data (Sentinel Hub's default
  ``harmonizeValues``, Earth Engine's ``S2_SR_HARMONIZED``), which carry no offset: reflectance = DN / 10,000.
- ``landsat-c2l2``: USGS Landsat Collection 2 Level-2 surface reflectance, reflectance = DN * 2.75e-5 - 0.2
  (USGS, https://www.usgs.gov/faqs/how-do-i-use-a-scale-factor-landsat-level-2-science-products). For a
  Landsat 8/9 stack (SR_B1..SR_B7) pass ``bands=(4, 3, 2)``; Landsat 4-7 is ``(3, 2, 1)``.
- Both reflectance presets then apply one true-colour stretch: reflectance 0..0.3 -> 0..255, clipped.
  Why 0.3: ESA's own true-colour image (TCI, coded 1..255) saturates at reflectance 0.2 for L2A
  (https://sentinels.copernicus.eu/web/sentinel/user-guides/sentinel-2-msi/definitions), which turns
  bright roofs, sand and snow white; Sentinel Hub's default true-colour script (gain 2.5,
  https://github.com/sentinel-hub/custom-scripts/blob/master/sentinel-2/true_color/script.js) saturates
  at 0.4 and leaves fields and water dark. 0.3 keeps both readable, closer to the aerial RGB imagery the
  published models were trained on (RS5M). ``linear:1000,3000`` on baseline >= 04.00 DNs (``linear:0,2000`` before) approximates the TCI's look.
- ``naip``: USDA NAIP, 4-band uint8 red, green, blue, near-infrared: the first three bands as they are.
- ``uint8``: 8-bit data as it is (the default for uint8 rasters).
- ``percentile``: per band, the 2nd..98th percentile of the scene's valid pixels -> 0..255, clipped
  (the default for every other dtype). The percentiles are computed ONCE per scene from a decimated read
  (an overview where the file has one), so every window of a scene gets the same stretch.
- ``linear:LO,HI``: values LO..HI -> 0..255, clipped (the same for every band, raw values, no scale).

Nodata (the nodata value, internal masks, alpha bands, NaN) is left out of every statistic and drawn black.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

try:  # rasterio is a core dependency; the guard turns a broken install into one clear line
    import rasterio
    from rasterio.enums import ColorInterp, MaskFlags, Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    from rasterio.io import MemoryFile
    from rasterio.windows import Window
except ImportError as _err:  # pragma: no cover - exercised only without rasterio
    rasterio = None
    _IMPORT_ERROR = _err

Array = np.ndarray
Window4 = tuple[int, int, int, int]
STATS_MAX_SIDE = 1024  # longest side of the decimated read the scene statistics are computed on
TRUE_COLOUR_RANGE = (0.0, 0.3)  # reflectance mapped to 0..255 by the reflectance presets (see module doc)


class RasterError(ValueError):
    """A raster that cannot be read or a bad preset/band argument; the message names the file or value."""


@dataclass(frozen=True)
class Preset:
    """How raw band values become 0..255.

    ``kind`` is ``"linear"`` (``(value * scale + offset)`` mapped from ``low..high`` to 0..255, clipped) or
    ``"percentile"`` (``low..high`` per band from the scene's ``percentiles`` of valid pixels).
    ``default_bands`` maps a band count to the 1-based bands read when the caller gives none.
    """

    name: str
    kind: str = "linear"
    scale: float = 1.0
    offset: float = 0.0
    low: float = 0.0
    high: float = 255.0
    percentiles: tuple[float, float] = (2.0, 98.0)
    default_bands: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def bands_for(self, count: int) -> tuple[int, ...] | None:
        return dict(self.default_bands).get(count)


_S2_BANDS = ((12, (4, 3, 2)), (13, (4, 3, 2)))
PRESETS: dict[str, Preset] = {
    "sentinel2-l2a": Preset("sentinel2-l2a", scale=1e-4, offset=-0.1, low=TRUE_COLOUR_RANGE[0],
                            high=TRUE_COLOUR_RANGE[1], default_bands=_S2_BANDS),
    "sentinel2-l2a-legacy": Preset("sentinel2-l2a-legacy", scale=1e-4, low=TRUE_COLOUR_RANGE[0],
                                   high=TRUE_COLOUR_RANGE[1], default_bands=_S2_BANDS),
    "landsat-c2l2": Preset("landsat-c2l2", scale=2.75e-5, offset=-0.2, low=TRUE_COLOUR_RANGE[0],
                           high=TRUE_COLOUR_RANGE[1]),
    "naip": Preset("naip", default_bands=((4, (1, 2, 3)),)),
    "uint8": Preset("uint8"),
    "percentile": Preset("percentile", kind="percentile"),
}


def parse_preset(name: str | Preset | None) -> Preset | None:
    """Return the preset called ``name`` (``None`` passes through: the dtype picks one later)."""
    if name is None or isinstance(name, Preset):
        return name
    key = str(name).strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    if key.startswith("linear:"):
        try:
            low, high = (float(part) for part in key[len("linear:"):].split(","))
        except ValueError:
            raise RasterError(f"bad preset {name!r}: expected linear:LO,HI with two numbers") from None
        if not high > low:
            raise RasterError(f"bad preset {name!r}: HI must be greater than LO")
        return Preset(key, low=low, high=high)
    known = ", ".join([*PRESETS, "linear:LO,HI"])
    raise RasterError(f"unknown preset {name!r}; known presets: {known}")


def default_preset(dtype: str | np.dtype) -> Preset:
    """``uint8`` for 8-bit data, ``percentile`` for everything else (16-bit, int16, float)."""
    return PRESETS["uint8"] if np.dtype(dtype) == np.uint8 else PRESETS["percentile"]


def percentile_stats(array: Array, valid: Array | None, percentiles=(2.0, 98.0)) -> Array:
    """Per-band (low, high) percentiles of the valid, finite pixels of ``array`` (bands, H, W): (bands, 2)."""
    stats = np.zeros((array.shape[0], 2), dtype=np.float64)
    for i, band in enumerate(array):
        keep = np.isfinite(band) if band.dtype.kind == "f" else np.ones(band.shape, bool)
        if valid is not None:
            keep &= valid
        values = band[keep]
        if values.size:
            stats[i] = np.percentile(values, percentiles)
    return stats


def to_uint8_rgb(array: Array, preset: str | Preset | None = None, nodata_mask: Array | None = None,
                 stats: Array | None = None) -> Array:
    """Map ``array`` (bands, H, W) with 1 or 3 bands to HxWx3 uint8 with ``preset``.

    ``nodata_mask`` (HxW bool, True = nodata) is drawn black and left out of the percentile statistics.
    ``stats`` ((bands, 2) low/high) gives precomputed percentile statistics (one stretch per scene).
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise RasterError(f"expected an array of shape (1 or 3, H, W), got {array.shape}")
    preset = parse_preset(preset) or default_preset(array.dtype)
    data = array.astype(np.float64)
    invalid = ~np.isfinite(data).all(axis=0)
    if nodata_mask is not None:
        invalid |= np.asarray(nodata_mask, dtype=bool)
    if preset.kind == "percentile":
        if stats is None:
            stats = percentile_stats(array, ~invalid, preset.percentiles)
        low, high = np.asarray(stats, np.float64)[:, 0, None, None], np.asarray(stats, np.float64)[:, 1, None, None]
    else:
        data = data * preset.scale + preset.offset
        low, high = preset.low, preset.high
    span = np.maximum(high - low, 1e-12)
    scaled = np.clip(np.rint((data - low) / span * 255.0), 0, 255)
    scaled = np.nan_to_num(scaled, nan=0.0).astype(np.uint8)
    scaled[:, invalid] = 0
    if scaled.shape[0] == 1:
        scaled = np.repeat(scaled, 3, axis=0)
    return np.ascontiguousarray(scaled.transpose(1, 2, 0))


def _gdal_message(err: BaseException) -> str:
    """GDAL's own message (rasterio chains it as the cause of "Read failed. See previous exception"),
    without the temporary /vsimem/ name rasterio gives in-memory files."""
    messages = []
    while err is not None and len(messages) < 5:
        if "see previous exception" not in str(err).lower() and str(err) not in messages:
            messages.append(str(err))
        err = err.__cause__
    text = "; ".join(messages) or "read failed"
    return re.sub(r"(/vsimem/\S*|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\.\w+)[:,]\s*", "", text)


def _require_rasterio() -> None:
    if rasterio is None:  # pragma: no cover
        raise RasterError(f"reading rasters needs rasterio: pip install rasterio ({_IMPORT_ERROR})")


class RasterScene:
    """One raster opened with rasterio; reads windows of it as 8-bit RGB with one stretch per scene.

    ``bands`` are 1-based (GDAL order). Without them: the bands tagged red/green/blue if the file tags
    them, else the preset's default for this band count, else (1, 2, 3), and one band replicated as grey.
    """

    def __init__(self, path: str | os.PathLike | bytes, bands: Sequence[int] | None = None,
                 preset: str | Preset | None = None):
        _require_rasterio()
        self._preset_arg = parse_preset(preset)  # bad preset fails before the file is opened
        self._memfile = None
        self.path = "<bytes>" if isinstance(path, (bytes, bytearray)) else str(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                if isinstance(path, (bytes, bytearray)):
                    self._memfile = MemoryFile(bytes(path))
                    self._ds = self._memfile.open()
                else:
                    self._ds = rasterio.open(path)
        except (RasterioIOError, OSError) as err:
            raise RasterError(f"cannot read raster {self.path}: {_gdal_message(err)}") from err
        ds = self._ds
        self.width, self.height, self.count = ds.width, ds.height, ds.count
        self.dtype = np.dtype(ds.dtypes[0])
        self.crs = ds.crs
        self.transform = ds.transform  # identity for PNG/JPEG (pixel coordinates)
        self.preset = self._preset_arg or default_preset(self.dtype)
        self.bands = self._pick_bands(bands)
        self._colormap = self._palette()
        self._all_valid = all(flags == [MaskFlags.all_valid] for flags in ds.mask_flag_enums)
        self._stats: Array | None = None

    # ------------------------------------------------------------------ setup
    def _pick_bands(self, bands: Sequence[int] | None) -> tuple[int, ...]:
        if bands is not None:
            bands = tuple(int(b) for b in bands)
            if len(bands) not in (1, 3):
                raise RasterError(f"bands={bands} for {self.path}: give 3 bands (R, G, B) or 1 (grey)")
            bad = [b for b in bands if not 1 <= b <= self.count]
            if bad:
                raise RasterError(f"band index {bad[0]} out of range for {self.path}, "
                                  f"which has {self.count} band(s) (bands are 1-based)")
            return bands
        interp = list(self._ds.colorinterp)
        tagged = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        if all(c in interp for c in tagged) and self._preset_arg is None:
            return tuple(interp.index(c) + 1 for c in tagged)
        preset_bands = self.preset.bands_for(self.count)
        if preset_bands:
            return preset_bands
        return (1,) if self.count < 3 else (1, 2, 3)

    def _palette(self) -> Array | None:
        """Lookup table for a 1-band palette raster (PNG/GIF/TIFF with a colour map), else None."""
        if self.bands != (1,) or self._ds.colorinterp[0] != ColorInterp.palette:
            return None
        try:
            cmap = self._ds.colormap(1)
        except ValueError:
            return None
        table = np.zeros((256, 3), dtype=np.uint8)
        for index, rgba in cmap.items():
            if 0 <= index < 256:
                table[index] = rgba[:3]
        return table

    # ------------------------------------------------------------------ reads
    def _window(self, window: Window4 | None) -> tuple[Window, bool]:
        if window is None:
            return Window(0, 0, self.width, self.height), False
        col, row, width, height = (int(v) for v in window)
        if width <= 0 or height <= 0:
            raise RasterError(f"window {window} for {self.path} has no pixels")
        inside = col >= 0 and row >= 0 and col + width <= self.width and row + height <= self.height
        return Window(col, row, width, height), not inside

    def _read(self, window: Window4 | None, out_size: tuple[int, int] | None,
              data_too: bool = True) -> tuple[Array | None, Array]:
        """Raw bands (len(bands), H, W) and the valid mask (H, W) of ``window`` at ``out_size`` (w, h)."""
        win, boundless = self._window(window)
        shape = (int(out_size[1]), int(out_size[0])) if out_size else (int(win.height), int(win.width))
        unique = tuple(dict.fromkeys(self.bands))
        kwargs = dict(window=win, boundless=boundless)
        data = None
        try:
            if data_too or self.dtype.kind == "f":
                data = self._ds.read(unique, out_shape=(len(unique), *shape), resampling=Resampling.average,
                                     fill_value=0, **kwargs)
                data = data[[unique.index(b) for b in self.bands]]
            if self._all_valid:  # no nodata, mask or alpha: skip GDAL's mask read (half the I/O)
                valid = self._inside(win, shape)
            else:
                masks = self._ds.read_masks(unique, out_shape=(len(unique), *shape), **kwargs)
                valid = (masks > 0).any(axis=0)  # GDAL's dataset-mask rule: nodata when every band is
        except (RasterioIOError, OSError, ValueError) as err:
            raise RasterError(f"cannot read window {window} of raster {self.path}: {_gdal_message(err)}") from err
        if data is not None and data.dtype.kind == "f":
            valid &= np.isfinite(data).all(axis=0)
        return data, valid

    def _inside(self, win: Window, shape: tuple[int, int]) -> Array:
        """Which output pixels (centres) of ``win`` resampled to ``shape`` fall inside the raster."""
        rows = win.row_off + (np.arange(shape[0]) + 0.5) * win.height / shape[0]
        cols = win.col_off + (np.arange(shape[1]) + 0.5) * win.width / shape[1]
        return ((rows >= 0) & (rows < self.height))[:, None] & ((cols >= 0) & (cols < self.width))[None, :]

    def stats(self) -> Array | None:
        """Per-band percentile (low, high) of the whole scene, computed once from a decimated read."""
        if self.preset.kind != "percentile":
            return None
        if self._stats is None:
            factor = max(1.0, max(self.width, self.height) / STATS_MAX_SIDE)
            size = (max(1, round(self.width / factor)), max(1, round(self.height / factor)))
            data, valid = self._read(None, size)
            self._stats = percentile_stats(data, valid, self.preset.percentiles)
        return self._stats

    def read_rgb(self, window: Window4 | None = None, out_size: tuple[int, int] | None = None) -> Array:
        """HxWx3 uint8 of ``window`` ((col_off, row_off, width, height) in pixels; None = whole raster).

        ``out_size=(w, h)`` resamples while reading, so GDAL reads the best overview instead of full
        resolution. Pixels outside the raster and nodata pixels are black.
        """
        data, valid = self._read(window, out_size)
        if self._colormap is not None:
            rgb = self._colormap[data[0].astype(np.intp).clip(0, 255)]
            rgb[~valid] = 0
            return rgb
        return to_uint8_rgb(data, self.preset, nodata_mask=~valid, stats=self.stats())

    def valid_mask(self, window: Window4 | None = None, out_size: tuple[int, int] | None = None) -> Array:
        """HxW bool, True where the pixel holds data (not nodata, not masked, not outside the raster)."""
        return self._read(window, out_size, data_too=False)[1]

    def close(self) -> None:
        self._ds.close()
        if self._memfile is not None:
            self._memfile.close()

    def __enter__(self) -> RasterScene:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"RasterScene({self.path!r}, {self.width}x{self.height}, {self.count} band(s) {self.dtype}, "
                f"bands={self.bands}, preset={self.preset.name!r}, crs={self.crs})")


def open_scene(path: str | os.PathLike | bytes, bands: Sequence[int] | None = None,
               preset: str | Preset | None = None) -> RasterScene:
    """Open ``path`` as a :class:`RasterScene` (use it as a context manager)."""
    return RasterScene(path, bands=bands, preset=preset)


def array_to_rgb(array: Array, bands: Sequence[int] | None = None, preset: str | Preset | None = None,
                 nodata: float | None = None) -> Array:
    """HxWx3 uint8 from an array in rasterio's (bands, H, W) order (or (H, W) single band)."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise RasterError(f"expected an array of shape (bands, H, W) or (H, W), got {array.shape}")
    parsed = parse_preset(preset)
    count = array.shape[0]
    if bands is None:
        bands = (parsed.bands_for(count) if parsed else None) or ((1,) if count < 3 else (1, 2, 3))
    bands = tuple(int(b) for b in bands)
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise RasterError(f"band index {bad[0]} out of range for an array with {count} band(s) "
                          "(bands are 1-based; arrays are (bands, H, W))")
    selected = array[[b - 1 for b in bands]]
    mask = None if nodata is None else (selected == nodata).all(axis=0)
    return to_uint8_rgb(selected, parsed, nodata_mask=mask)


def read_image(source, bands: Sequence[int] | None = None, preset: str | Preset | None = None,
               max_side: int | None = None) -> Image.Image:
    """The whole raster (path, bytes or (bands, H, W) array) as an 8-bit RGB PIL image.

    ``max_side`` reads a decimated version (overview) whose longest side is at most that many pixels.
    """
    if isinstance(source, np.ndarray):
        return Image.fromarray(array_to_rgb(source, bands, preset))
    if isinstance(source, io.IOBase):
        source = source.read()
    with open_scene(source, bands=bands, preset=preset) as scene:
        size = None
        if max_side and max(scene.width, scene.height) > max_side:
            factor = max(scene.width, scene.height) / max_side
            size = (max(1, round(scene.width / factor)), max(1, round(scene.height / factor)))
        return Image.fromarray(scene.read_rgb(out_size=size))


__all__ = ["PRESETS", "Preset", "RasterError", "RasterScene", "array_to_rgb", "default_preset",
           "open_scene", "parse_preset", "percentile_stats", "read_image", "to_uint8_rgb"]

