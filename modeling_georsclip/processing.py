"""Tokenizer, image processor and ``GeoRSCLIPProcessor``: open_clip-exact inputs from HF components.

- Text: the OpenAI CLIP BPE tokenizer shipped as package data (no download), preceded by open_clip's
  caption cleaning (ftfy + double HTML unescape + whitespace collapse), so token ids equal
  ``open_clip.tokenize`` — context 77, truncation keeps ``<sot>`` + 75 tokens + ``<eot>``.
- Images: transformers' PIL-backend CLIP image processor (bicubic shortest-edge resize, centre crop,
  normalise), bit-identical to open_clip's validation transform, after ``imaging.load_image`` turned RGBA,
  palette, CMYK and (through ``raster``) multi-band, 16-bit and float rasters into correct 8-bit RGB.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
from transformers import BatchFeature, CLIPProcessor, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from .imaging import load_image

TOKENIZER_DIR = Path(__file__).parent / "tokenizer_data"
CONTEXT_LENGTH = 77

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# Channel statistics of RS5M and its subsets (RS5M paper); "clip" is the default because the published
# GeoRSCLIP numbers were produced with the OpenAI statistics.
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": (OPENAI_MEAN, OPENAI_STD),
    "rs5m": ((0.406, 0.423, 0.390), (0.188, 0.175, 0.185)),
    "pub11": ((0.445, 0.469, 0.441), (0.208, 0.193, 0.213)),
    "rs3": ((0.350, 0.356, 0.316), (0.158, 0.147, 0.143)),
}

_WHITESPACE = re.compile(r"\s+")
_PIXEL_TABLES: dict[tuple, np.ndarray] = {}  # OpenCLIPImageProcessor._pixel_table, by (channels, scale, mean, std)


def clean_text(text: str) -> str:
    """open_clip's caption cleaning: ftfy fix, HTML-unescape twice, collapse whitespace, strip."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WHITESPACE.sub(" ", text).strip()


def load_tokenizer(path: str | os.PathLike | None = None) -> CLIPTokenizer:
    """The OpenAI CLIP BPE tokenizer (49,408 ids, context 77) from package data, or from ``path``."""
    return CLIPTokenizer.from_pretrained(str(path or TOKENIZER_DIR), model_max_length=CONTEXT_LENGTH)


class OpenCLIPImageProcessor(CLIPImageProcessorPil):
    """transformers' PIL CLIP processor with torchvision's centre-crop rounding (open_clip-exact).

    transformers crops at ``int(margin / 2)``, torchvision's ``CenterCrop`` (open_clip) at
    ``round(margin / 2)``; when the margin is 3 mod 4 pixels the two differ by one pixel. The saved
    ``image_processor_type`` stays ``CLIPImageProcessor`` so that stock transformers loads the folder
    (it then crops with its own rounding: a one-pixel shift on some image sizes, nothing else).
    """

    def center_crop(self, image, size, **kwargs):
        height, width = image.shape[-2:]
        if size.height is None or size.width is None or size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)
        top = int(round((height - size.height) / 2.0))
        left = int(round((width - size.width) / 2.0))
        return image[..., top : top + size.height, left : left + size.width]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["image_processor_type"] = "CLIPImageProcessor"
        return output

    def _preprocess(self, images: list[np.ndarray], do_resize: bool, size: Any, resample: Any, do_center_crop: bool,
                    crop_size: Any, do_rescale: bool, rescale_factor: float, do_normalize: bool, image_mean: Any,
                    image_std: Any, do_pad: bool | None, pad_size: Any, return_tensors: Any, **kwargs) -> BatchFeature:
        """transformers' per-image loop, with rescale + normalize of 8-bit images done by one table lookup.

        Why: both are elementwise, so on uint8 pixels their result is a function of (channel, value); the
        table is computed by transformers' own ``rescale``/``normalize`` on a 0..255 ramp, so the lookup is
        bit-identical to calling them, and several times cheaper (they make several float64 passes per image).
        That was a third of the processor's time per image (evaluation, SeLo and localize crops, tiles, the
        demo); the training loader normalises with torchvision instead.
        """
        if not (do_rescale and do_normalize) or do_pad:
            return super()._preprocess(images, do_resize, size, resample, do_center_crop, crop_size, do_rescale,
                                       rescale_factor, do_normalize, image_mean, image_std, do_pad, pad_size,
                                       return_tensors, **kwargs)
        processed = []
        for image in images:
            if do_resize:
                image = self.resize(image=image, size=size, resample=resample)
            if do_center_crop:
                image = self.center_crop(image, crop_size)
            if image.dtype == np.uint8 and image.ndim == 3:
                table = self._pixel_table(image.shape[0], rescale_factor, image_mean, image_std)
                values = np.empty(image.shape, dtype=table.dtype)
                for channel in range(image.shape[0]):
                    values[channel] = table[channel][image[channel]]
                image = values
            else:
                image = self.normalize(self.rescale(image, rescale_factor), image_mean, image_std)
            processed.append(image)
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)

    def _pixel_table(self, channels: int, scale: float, mean: Any, std: Any) -> np.ndarray:
        """(channels, 256) float32: what ``normalize(rescale(v))`` gives for each channel and 8-bit value."""
        # kept outside the instance: its __dict__ is what to_dict()/save_pretrained() serialize
        key = (channels, float(scale), tuple(np.ravel(mean).tolist()), tuple(np.ravel(std).tolist()))
        if key not in _PIXEL_TABLES:
            ramp = np.broadcast_to(np.arange(256, dtype=np.uint8), (channels, 1, 256)).copy()  # channel-first
            _PIXEL_TABLES[key] = self.normalize(self.rescale(ramp, scale), mean, std)[:, 0, :]
        return _PIXEL_TABLES[key]


def make_image_processor(image_size: int = 224, preset: str = "clip") -> OpenCLIPImageProcessor:
    """CLIP image processor for ``image_size`` with the named normalisation preset."""
    if preset not in NORMALIZATION_PRESETS:
        raise ValueError(f"unknown normalisation preset {preset!r}; choose one of {sorted(NORMALIZATION_PRESETS)}")
    mean, std = NORMALIZATION_PRESETS[preset]
    return OpenCLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(mean),
        image_std=list(std),
    )


def crop_height(image_processor: Any) -> int:
    """The square input size an image processor produces (its crop height; dict or SizeDict)."""
    crop = image_processor.crop_size
    return int(crop["height"] if isinstance(crop, dict) else getattr(crop, "height", crop))


class GeoRSCLIPProcessor(CLIPProcessor):
    """A ``CLIPProcessor`` that cleans captions like open_clip and reads any remote-sensing image.

    ``images`` may be PIL images, paths, raw bytes or numpy arrays of any image or raster (see ``__call__``
    for ``bands`` and ``preset``); ``text`` a string or list of strings. Saved folders
    hold a plain ``CLIPProcessor`` so that stock transformers (and Hub widgets) load them.
    """

    @classmethod
    def default(cls, image_size: int = 224, preset: str = "clip") -> GeoRSCLIPProcessor:
        """The processor every GeoRSCLIP checkpoint uses, built from package data (no download)."""
        return cls(image_processor=make_image_processor(image_size, preset), tokenizer=load_tokenizer())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> GeoRSCLIPProcessor:
        """Load a saved CLIP processor, keeping its settings but using the PIL backend (open_clip-exact)."""
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not isinstance(processor.image_processor, OpenCLIPImageProcessor):
            settings = processor.image_processor.to_dict()
            settings.pop("image_processor_type", None)
            processor.image_processor = OpenCLIPImageProcessor(**settings)
        return processor

    def __call__(self, images: Any = None, text: str | Sequence[str] | None = None, *,
                 bands: Sequence[int] | None = None, preset: str | None = None, **kwargs):
        """Tokenize ``text`` and/or preprocess ``images``.

        ``images``: PIL images, paths or bytes of any image or raster (GeoTIFF/COG of any band count and
        dtype), or numpy arrays in rasterio's (bands, H, W) order (an HxWx3 uint8 picture is taken as is).
        ``bands`` (1-based, e.g. ``(4, 3, 2)``) and ``preset`` (``"sentinel2-l2a"``, ``"landsat-c2l2"``,
        ``"percentile"``, ``"linear:0,3000"``, ...; see :mod:`modeling_georsclip.raster`) say how rasters and
        arrays become 8-bit RGB; without them 8-bit data is used as is and other data gets a 2-98 % stretch.
        """
        if text is not None:
            text = clean_text(text) if isinstance(text, str) else [clean_text(t) for t in text]
            kwargs.setdefault("padding", True)
            kwargs.setdefault("truncation", True)
            kwargs.setdefault("max_length", CONTEXT_LENGTH)
        if images is not None:
            many = isinstance(images, (list, tuple))
            read = {"bands": bands, "preset": preset}
            images = [load_image(im, **read) for im in images] if many else load_image(images, **read)
        return super().__call__(images=images, text=text, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """Save as a stock ``CLIPProcessor`` (plus vocab.json/merges.txt for older readers)."""
        plain = CLIPProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer)
        result = plain.save_pretrained(save_directory, **kwargs)
        for name in ("vocab.json", "merges.txt"):
            source = TOKENIZER_DIR / name
            if source.exists() and not (Path(save_directory) / name).exists():
                (Path(save_directory) / name).write_bytes(source.read_bytes())
        return result
