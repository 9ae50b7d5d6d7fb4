"""Our image processor against open_clip's validation transform on real remote-sensing images.

Tolerance: 1e-6 (float round-off). transformers' PIL-backend CLIP processor resizes with the same
Pillow bicubic call as open_clip; our subclass also crops with torchvision's rounding (``round(margin/2)``
instead of transformers' ``int(margin/2)``), so the pixels are bit-identical (measured max difference 0.0).
Images whose crop margin is 3 mod 4 pixels -- where the two roundings differ -- are checked explicitly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from modeling_georsclip import GeoRSCLIPProcessor
from modeling_georsclip.imaging import load_image, to_rgb

from conftest import ROOT, SAMPLES

IMAGE_DIRS = [SAMPLES / "images", ROOT.parent / "shared" / "data" / "rs-samples" / "images"]
TOLERANCE = 1e-6


def real_images() -> list[Path]:
    by_name: dict[str, Path] = {}
    for folder in IMAGE_DIRS:
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif", ".tiff"}:
                    by_name.setdefault(path.name, path)
    return list(by_name.values())


IMAGES = real_images()


def crop_offsets_differ(path: Path, size: int = 224) -> bool:
    """True when transformers' and torchvision's centre-crop offsets differ for this image at ``size``."""
    with Image.open(path) as image:
        width, height = image.size
    short, long = min(width, height), max(width, height)
    margin = int(size * long / short) - size
    return round(margin / 2) != margin // 2


PARAMS = [pytest.param(p, id=p.name) for p in IMAGES]


def test_there_are_real_images():
    assert len(IMAGES) >= 30
    # the rounding-sensitive case must be among them, or the crop fix goes untested
    assert any(crop_offsets_differ(p) for p in IMAGES)


@pytest.fixture(scope="module")
def transforms():
    return GeoRSCLIPProcessor.default(image_size=224), open_clip.image_transform(224, is_train=False)


@pytest.mark.parametrize("path", PARAMS)
def test_pixels_match_open_clip_val_transform(path, transforms):
    processor, open_clip_transform = transforms
    ours = processor(images=str(path), return_tensors="pt")["pixel_values"][0]
    with Image.open(path) as image:
        image.load()
        # open_clip's own RGB conversion is only right for RGB/L input; compare the rest after our to_rgb
        source = image if image.mode in ("RGB", "L") else to_rgb(image)
        theirs = open_clip_transform(source)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert (ours - theirs).abs().max().item() <= TOLERANCE


def test_rgba_keeps_the_first_three_bands():
    naip = [p for p in IMAGES if p.name.startswith("opengeos__m_")]  # NAIP: R, G, B, near-infrared
    if naip:
        with Image.open(naip[0]) as image:
            image.load()
            assert image.mode == "RGBA"
            bands = np.asarray(image)
    else:
        rng = np.random.default_rng(0)
        bands = rng.integers(0, 256, size=(16, 16, 4), dtype=np.uint8)
        bands[..., 3] = 7  # a dark NIR band: compositing would darken the picture
    rgb = np.asarray(to_rgb(Image.fromarray(bands, mode="RGBA")))
    assert np.array_equal(rgb, bands[..., :3])


def test_16_bit_single_band_is_stretched_not_clipped():
    """12-bit data in a 16-bit container: Pillow's convert clips it white; we stretch its 2-98 % range."""
    twelve_bit = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 0..4095, one pixel per value
    image = Image.fromarray(twelve_bit)
    assert image.mode.startswith("I;16")
    assert np.asarray(image.convert("RGB")).max() == 255 and (np.asarray(image.convert("RGB")) == 255).mean() > 0.9
    rgb = np.asarray(load_image(image))
    assert rgb.shape == (64, 64, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    grey = rgb[..., 0].ravel()
    # numpy's linear percentiles of 0..4095: 2 % = 81.9, 98 % = 4013.1 -> 0..255
    assert grey[81] == 0 and grey[82] == 0 and grey[4014] == 255
    assert grey[2047] == 127 and grey[2048] == 128  # (2047 - 81.9) / 3931.2 * 255 = 127.47; 2048 -> 127.53


def test_palette_becomes_palette_colours():
    palette = [0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    rgb = np.asarray(to_rgb(image))
    assert rgb.tolist() == [[[0, 0, 0], [255, 0, 0]], [[0, 128, 255], [255, 0, 0]]]


def test_cmyk_becomes_rgb():
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0]], [[0, 0, 255, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    rgb = np.asarray(to_rgb(Image.fromarray(cmyk, mode="CMYK")))
    assert rgb.tolist() == [[[255, 255, 255], [0, 255, 255]], [[255, 255, 0], [0, 0, 0]]]


def test_processor_accepts_every_real_image_as_path_bytes_and_pil(transforms):
    processor, _ = transforms
    path = IMAGES[0]
    from_path = processor(images=str(path), return_tensors="pt")["pixel_values"]
    from_bytes = processor(images=path.read_bytes(), return_tensors="pt")["pixel_values"]
    with Image.open(path) as image:
        from_pil = processor(images=image, return_tensors="pt")["pixel_values"]
    assert torch.equal(from_path, from_bytes) and torch.equal(from_path, from_pil)


def test_table_lookup_equals_stock_transformers_bit_for_bit():
    """Rescale + normalize of 8-bit pixels by table lookup gives stock CLIPImageProcessorPil's floats exactly
    (every preset, odd sizes, a grey image), and non-8-bit input still takes transformers' own path."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from modeling_georsclip.processing import NORMALIZATION_PRESETS, make_image_processor

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              [(256, 256), (300, 500), (224, 224), (96, 1000)]]
    images.append(Image.fromarray(rng.integers(0, 256, (230, 230), dtype=np.uint8)).convert("RGB"))
    for preset, (mean, std) in NORMALIZATION_PRESETS.items():
        ours = make_image_processor(224, preset)(images=images, return_tensors="np")["pixel_values"]
        stock = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                      image_mean=list(mean), image_std=list(std))
        np.testing.assert_array_equal(ours, stock(images=images, return_tensors="np")["pixel_values"], preset)
    floats = rng.random((3, 224, 224)).astype(np.float32)  # channel-first float input: no table
    stock = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    for rescale in (True, False):
        ours = make_image_processor(224)(images=[floats], do_rescale=rescale, return_tensors="np")["pixel_values"]
        theirs = stock(images=[floats], do_rescale=rescale, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(ours, theirs)


def test_saved_processor_config_is_unchanged_by_the_lookup_tables(tmp_path):
    processor = GeoRSCLIPProcessor.default(224)
    before = processor.image_processor.to_json_string()
    processor(images=[Image.new("RGB", (300, 260), (10, 200, 30))], return_tensors="pt")
    assert processor.image_processor.to_json_string() == before  # no cache leaks into what is saved
    processor.save_pretrained(tmp_path)
    assert GeoRSCLIPProcessor.from_pretrained(tmp_path).image_processor.to_dict() == processor.image_processor.to_dict()
