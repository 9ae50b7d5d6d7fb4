"""One decoder for every image the library reads: bytes or paths -> correct 8-bit RGB, or one error kind.

Remote-sensing files are rarely plain RGB JPEGs: NAIP tiles store near-infrared as a fourth ("alpha")
band, drone orthomosaics carry a nodata alpha mask, Landsat/Sentinel exports are 16-bit, float or have
six or more bands, and archives contain palette and CMYK files. Everything with more than 8 bits per
sample, and every TIFF, goes through :mod:`modeling_georsclip.raster` (rasterio) so one preset gives the
same pixels in the processor, the dataset builder, the training stream and evaluation. 8-bit JPEG/PNG
stay on Pillow (open_clip pixel parity; libjpeg's draft scaling for large JPEGs).

Every failure is an :class:`ImageDecodeError` whose ``kind`` is one of :data:`DECODE_KINDS`; captions
are checked by :func:`decode_caption` with kinds from :data:`CAPTION_KINDS`. Builder reports and the
training stream's skip counters use exactly these names.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import raster

ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image | np.ndarray

DECODE_KINDS = (
    "missing_file",  # a path that does not exist
    "empty_file",  # 0 bytes
    "not_an_image",  # bytes no decoder identifies (HTML error pages, text, garbage)
    "truncated",  # an image cut short
    "decompression_bomb",  # more pixels than the limit
    "unreadable",  # any other decode error
)
CAPTION_KINDS = (
    "empty_caption",  # missing or whitespace-only caption
    "caption_not_utf8",  # caption bytes that are not valid UTF-8
)
SKIP_KINDS = DECODE_KINDS + CAPTION_KINDS

_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "RGBX", "LA", "La", "PA"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_DEFAULT = object()


class ImageDecodeError(OSError):
    """An image that cannot be decoded; ``kind`` is one of :data:`DECODE_KINDS`, the message names the file."""

    def __init__(self, kind: str, name: str, detail: str):
        if kind not in DECODE_KINDS:
            raise ValueError(f"unknown decode kind {kind!r}; known: {', '.join(DECODE_KINDS)}")
        super().__init__(f"cannot read image {name}: {detail}")
        self.kind, self.name, self.detail = kind, name, detail

    def __reduce__(self):  # picklable across worker processes (OSError would re-create it from the message)
        return type(self), (self.kind, self.name, self.detail)


def to_rgb(image: Image.Image, bands: Sequence[int] | None = None, preset: str | None = None) -> Image.Image:
    """Return an 8-bit RGB version of an opened PIL ``image`` (first frame of multi-frame files).

    - RGB: unchanged.
    - RGBA / LA / RGBX: the extra band is dropped, never composited (it is NIR on NAIP, a nodata mask on
      orthomosaics: blending it would darken real pixels).
    - P (palette): expanded through the palette (transparency dropped).
    - CMYK, YCbCr, LAB, HSV, 1, L: Pillow's colour conversion.
    - I;16*, I, F (16-bit, 32-bit, float single band): :mod:`raster`'s preset (default: the 2-98 %
      percentile stretch), then replicated to three bands.
    """
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    mode = image.mode
    if bands is not None or preset is not None or mode in _HIGH_DEPTH_MODES:
        if mode not in _HIGH_DEPTH_MODES | {"L", "LA", "RGB", "RGBA", "RGBX"}:
            image = to_rgb(image)  # palette, CMYK, ...: colours first, then the preset
        array = np.asarray(image)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return Image.fromarray(raster.array_to_rgb(array, bands, preset))
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES:
        if mode in {"LA", "La"}:
            return image.getchannel(0).convert("RGB")
        if mode == "PA":
            return image.convert("RGBA").convert("RGB")
        r, g, b = image.split()[:3]
        return Image.merge("RGB", (r, g, b))
    if mode == "P":
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def _array_image(array: np.ndarray, bands, preset) -> Image.Image:
    """An array in rasterio's (bands, H, W) order, or an HxWx(1..4) picture as ``np.asarray(pil)`` gives.

    The layout is told apart by shape: a last axis of at most 4 after a first axis longer than 4 is
    channels-last. An HxWx3/4 uint8 picture without ``bands``/``preset`` is used as it is.
    """
    channels_last = array.ndim == 3 and array.shape[-1] <= 4 < array.shape[0]
    if channels_last and array.dtype == np.uint8 and array.shape[-1] in (3, 4) and bands is None and preset is None:
        return Image.fromarray(np.ascontiguousarray(array[..., :3]))
    if channels_last:
        array = array.transpose(2, 0, 1)
    return Image.fromarray(raster.array_to_rgb(array, bands, preset))


def _kind_of(err: BaseException) -> str:
    text = str(err).lower()
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "decompression_bomb"
    if isinstance(err, UnidentifiedImageError) or "not recognized as" in text or "not a supported file" in text:
        return "not_an_image"
    if "truncated" in text or "premature end" in text or "short read" in text or "read error" in text:
        return "truncated"
    return "unreadable"


def read_bytes(source, name: str | None = None) -> bytes:
    """The encoded bytes of a path, bytes or file object; a missing file is ImageDecodeError(missing_file)."""
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise ImageDecodeError("missing_file", name, "no such file") from None
        except IsADirectoryError:
            raise ImageDecodeError("missing_file", name, "is a folder, not a file") from None
        except OSError as err:
            raise ImageDecodeError("unreadable", name, err.strerror or str(err)) from err
    return source.read()


def _tiff_directory_missing(data: bytes) -> bool:
    """True when a TIFF's first directory lies past the end of ``data`` (a file cut short before it)."""
    order = "<" if data[:2] == b"II" else ">"
    if data[2:4] in (b"*\x00", b"\x00*"):  # classic TIFF: 4-byte offset at byte 4
        offset = int.from_bytes(data[4:8], "little" if order == "<" else "big")
    else:  # BigTIFF: 8-byte offset at byte 8
        offset = int.from_bytes(data[8:16], "little" if order == "<" else "big")
    return len(data) < 16 or offset >= len(data)


def _decode_raster(data: bytes, name: str, limit: int | None, bands, preset) -> Image.Image:
    try:
        with raster.open_scene(data, bands=bands, preset=preset) as scene:
            if limit is not None and scene.width * scene.height > limit:
                raise ImageDecodeError("decompression_bomb", name, f"{scene.width}x{scene.height} pixels is "
                                       f"more than the limit of {limit}")
            return Image.fromarray(scene.read_rgb())
    except raster.RasterError as err:
        if err.__cause__ is not None:  # rasterio could not open or read the data: a corrupt sample
            detail = raster._gdal_message(err.__cause__)
            kind = "truncated" if _tiff_directory_missing(data) else _kind_of(OSError(detail))
            raise ImageDecodeError(kind, name, detail) from err
        raise  # a bad preset or band index is the caller's mistake, not a corrupt sample


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = _DEFAULT,  # type: ignore[assignment]
    draft_size: int | None = None,
    bands: Sequence[int] | None = None,
    preset: str | None = None,
) -> Image.Image:
    """Decode ``source`` (path, bytes, file object, PIL image or array) to 8-bit RGB, or raise ImageDecodeError.

    ``max_pixels``: images with more pixels are ``decompression_bomb`` (default ``Image.MAX_IMAGE_PIXELS``;
    ``None`` = no limit). Pillow only warns between 1x and 2x its limit; here both are errors.
    ``draft_size``: JPEGs larger than twice this on both sides are decoded at a reduced scale (libjpeg's DCT
    scaling, ``Image.draft``) that keeps both sides >= ``draft_size``; the resize to the model size that
    follows hardly changes and a 1920 px scene decodes several times faster.
    ``bands`` (1-based) and ``preset`` (see :mod:`raster`) apply to rasters and arrays; TIFFs and images with
    more than 8 bits per sample are read with rasterio. A bad ``bands``/``preset`` raises ``RasterError``.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source, bands, preset)
    if isinstance(source, np.ndarray):
        return _array_image(source, bands, preset)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is _DEFAULT else max_pixels
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>"
    data = read_bytes(source, name)
    if not data:
        raise ImageDecodeError("empty_file", name, "empty image data (0 bytes)")
    if data[:4] in _TIFF_MAGIC:
        return _decode_raster(data, name, limit, bands, preset)
    previous = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = limit
            image = Image.open(io.BytesIO(data))
            if image.mode in _HIGH_DEPTH_MODES:  # 16-bit PNG and friends: one stretch for all rasters
                return _decode_raster(data, name, limit, bands, preset)
            if draft_size and image.format == "JPEG" and min(image.size) >= 2 * draft_size:
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return to_rgb(image, bands, preset)
    except ImageDecodeError:
        raise
    except raster.RasterError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(_kind_of(err), name, str(err)) from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decode_caption(caption: bytes | str | None) -> tuple[str | None, str | None]:
    """(caption text, None) or (None, kind from :data:`CAPTION_KINDS`).

    Undecodable bytes arrive either as bytes or as lone surrogates (``errors="surrogateescape"`` upstream).
    """
    if isinstance(caption, (bytes, bytearray)):
        try:
            caption = bytes(caption).decode("utf-8")
        except UnicodeDecodeError:
            return None, "caption_not_utf8"
    if caption is None or not caption.strip():
        return None, "empty_caption"
    if any("\ud800" <= ch <= "\udfff" for ch in caption):
        return None, "caption_not_utf8"
    return caption, None
