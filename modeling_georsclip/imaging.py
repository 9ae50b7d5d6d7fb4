"""Open any remote-sensing image Pillow can read and return correct 8-bit RGB.

Remote-sensing files are rarely plain RGB JPEGs: NAIP tiles store near-infrared as a fourth ("alpha")
band, drone orthomosaics carry a nodata alpha mask, Landsat/Sentinel exports are 16-bit or single band,
and archives contain palette and CMYK files. ``PIL.Image.convert("RGB")`` handles some of these but clips
16-bit data to 255 (a white image) and composites nothing; this module does each case deliberately.
No library does this mode-by-mode normalisation for us (torchvision and transformers assume 8-bit input),
hence the hand-written code.
"""

from __future__ import annotations

import io
import math
import os
from typing import BinaryIO

import numpy as np
from PIL import Image

ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image

_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "RGBX", "LA", "La", "PA"}


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map one band of integer or float samples to 0..255 without clipping the data's real range.

    Integer data is scaled by its bit depth inferred from the maximum value (8, 10, 12, 14 or 16 bits:
    sensors store 12-bit data in 16-bit containers), so relative brightness between images of the same
    sensor is kept. Float data in [0, 1] is reflectance and is multiplied by 255; other float data is
    min-max stretched.
    """
    array = np.asarray(array)
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    if finite.size == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if array.dtype.kind == "f":
        if low >= 0.0 and high <= 1.0:
            scaled = array * 255.0
        else:
            scaled = (array - low) / max(high - low, 1e-12) * 255.0
        return np.nan_to_num(np.clip(np.rint(scaled), 0, 255)).astype(np.uint8)
    if low < 0:
        scaled = (array.astype(np.float64) - low) / max(high - low, 1.0) * 255.0
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if high <= 255:
        return array.astype(np.uint8)
    bits = max(8, math.ceil(math.log2(high + 1)))
    bits = min(bits + (bits % 2), 16) if bits <= 16 else bits  # round up to an even container depth
    scaled = array.astype(np.float64) * (255.0 / (2**bits - 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB version of ``image`` (first frame of multi-frame files).

    - RGB: unchanged.
    - RGBA / LA / RGBX: the extra band is dropped, never composited (it is NIR on NAIP, a nodata mask on
      orthomosaics: blending it would darken real pixels).
    - P (palette): expanded through the palette (transparency dropped).
    - CMYK, YCbCr, LAB, HSV, 1, L: Pillow's colour conversion.
    - I;16*, I, F (16-bit, 32-bit, float single band): scaled to 8 bits by bit depth (see
      ``_scale_to_uint8``), then replicated to three bands.
    """
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_DEPTH_MODES:
        band = _scale_to_uint8(np.asarray(image))
        return Image.fromarray(band, mode="L").convert("RGB")
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


def load_image(source: ImageSource) -> Image.Image:
    """Open ``source`` (path, bytes, file object or PIL image), fully decode it and return 8-bit RGB.

    Raises the underlying ``OSError`` / ``PIL.UnidentifiedImageError`` / ``Image.DecompressionBombError``
    with the file name added when the input is not a readable image.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>"
    try:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise OSError("empty image data (0 bytes)")
            image = Image.open(io.BytesIO(source))
        else:
            image = Image.open(source)
        image.load()
        return to_rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise type(err)(f"cannot read image {name}: {err}") from err
