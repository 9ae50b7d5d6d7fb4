"""The raster reader on real GeoTIFFs and on rasters written here with rasterio.

Expected 8-bit values are worked out by hand in the comments (reflectance -> fraction of the 0..0.3
true-colour range -> x 255, rounded), never by calling the code's own formula.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from PIL import Image, UnidentifiedImageError
from rasterio.transform import from_origin

from modeling_georsclip import GeoRSCLIPProcessor
from modeling_georsclip import raster as raster_module
from modeling_georsclip.imaging import ImageDecodeError, load_image
from modeling_georsclip.raster import RasterError, open_scene, parse_preset, read_image, to_uint8_rgb

DATA = Path(__file__).resolve().parent / "data"
RGB_BYTE = DATA / "rasterio__RGB.byte.tif"  # Landsat 7 subset, EPSG:32618, nodata 0 border
NAIP = DATA / "opengeos__m_4709963_se_14_1_20200831.tif"  # NAIP 2020, 4 bands R, G, B, NIR, uint8


def write(path: Path, data: np.ndarray, nodata=None, crs="EPSG:32633", **profile) -> Path:
    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype,
               "crs": crs, "transform": from_origin(500000, 4600000, 10, 10), "nodata": nodata, **profile}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


# ------------------------------------------------------------------------------------------------ real files
def test_real_geotiff_keeps_crs_transform_and_draws_nodata_black():
    with open_scene(RGB_BYTE) as scene:
        assert (scene.width, scene.height, scene.count, str(scene.dtype)) == (791, 718, 3, "uint8")
        assert scene.crs.to_epsg() == 32618
        assert scene.transform.c == 101985.0 and scene.transform.f == 2826915.0
        assert scene.transform.a == pytest.approx(300.0379266750948) and scene.transform.e < 0
        rgb, valid = scene.read_rgb(), scene.valid_mask()
    with rasterio.open(RGB_BYTE) as src:
        raw = src.read()
    assert rgb.shape == (718, 791, 3) and valid.shape == (718, 791)
    assert not valid[0, 0] and valid[359, 395]  # the rotated footprint's corner is nodata, the centre is not
    assert 0.6 < valid.mean() < 0.75  # about a third of the file is the nodata border
    assert (rgb[~valid] == 0).all()
    assert np.array_equal(rgb[valid], raw.transpose(1, 2, 0)[valid])  # uint8 preset: values as stored


def test_percentile_statistics_leave_nodata_out():
    with open_scene(RGB_BYTE, preset="percentile") as scene:
        stats = scene.stats()
        rgb, valid = scene.read_rgb(), scene.valid_mask()
    # 32 % of the pixels are 0 (nodata): had they counted, every band's 2nd percentile would be 0
    assert (stats[:, 0] > 0).all() and (stats[:, 1] > stats[:, 0]).all()
    assert (rgb[~valid] == 0).all()
    # a 2-98 % stretch saturates about 2 % of the valid pixels at each end of every band
    assert 0.005 < (rgb[valid] == 255).mean() < 0.05


def test_naip_reads_first_three_bands_like_pillow():
    with open_scene(NAIP) as scene:
        assert scene.count == 4 and scene.bands == (1, 2, 3) and scene.crs.to_epsg() == 26914
        rgb = scene.read_rgb()
    with Image.open(NAIP) as image:  # Pillow: RGBA with NIR as "alpha"
        expected = np.asarray(image)[..., :3]
    assert np.array_equal(rgb, expected)
    assert np.array_equal(np.asarray(read_image(NAIP, preset="naip")), expected)
    assert np.array_equal(np.asarray(load_image(str(NAIP))), expected)


# ------------------------------------------------------------------------------------------------ presets
def sentinel2_stack(tmp_path: Path) -> Path:
    """12-band uint16 (L2A order B1..B12 without B10) with a 2-pixel nodata (0) border."""
    data = np.full((12, 8, 8), 9999, dtype=np.uint16)  # bands other than B4/B3/B2 would saturate to 255
    data[3], data[2], data[1] = 2200, 1600, 1150  # B4 red, B3 green, B2 blue
    data[3, 2, 2], data[3, 2, 3] = 5000, 500  # above the range, below the offset
    data[:, :2, :] = data[:, -2:, :] = data[:, :, :2] = data[:, :, -2:] = 0
    return write(tmp_path / "s2.tif", data, nodata=0)


def test_sentinel2_l2a_preset_gives_hand_computed_pixels(tmp_path):
    path = sentinel2_stack(tmp_path)
    with open_scene(path, preset="sentinel2-l2a") as scene:
        assert scene.bands == (4, 3, 2)  # the preset's default for 12 bands
        rgb, valid = scene.read_rgb(), scene.valid_mask()
    # (2200 - 1000) / 10000 = 0.12 -> 0.12 / 0.3 * 255 = 102; green 0.06 -> 51; blue 0.015 -> 12.75 -> 13
    assert rgb[4, 4].tolist() == [102, 51, 13]
    assert rgb[2, 2, 0] == 255 and rgb[2, 3, 0] == 0  # 0.4 clipped to 255; -0.05 clipped to 0
    assert valid.sum() == 16 and not valid[0].any() and not valid[:, -1].any()
    assert (rgb[~valid] == 0).all()
    # before baseline 04.00 there is no offset: 2200 / 10000 = 0.22 -> 187
    assert np.asarray(read_image(path, preset="sentinel2-l2a-legacy"))[4, 4, 0] == 187


def test_landsat_c2l2_preset(tmp_path):
    data = np.array([[[11000, 8000], [7000, 20000]]] * 3, dtype=np.uint16)
    rgb = np.asarray(read_image(write(tmp_path / "l8.tif", data), preset="landsat-c2l2"))
    # 11000 * 2.75e-5 - 0.2 = 0.1025 -> 87.125 -> 87; 8000 -> 0.02 -> 17; 7000 -> -0.0075 -> 0; 20000 -> 0.35 -> 255
    assert rgb[..., 0].tolist() == [[87, 17], [0, 255]]


def test_float32_reflectance_with_nan_nodata(tmp_path):
    data = np.array([[[0.1, 0.2], [np.nan, 0.5]]] * 3, dtype=np.float32)
    path = write(tmp_path / "float.tif", data, nodata=np.nan)
    with open_scene(path, preset="linear:0,0.3") as scene:
        rgb, valid = scene.read_rgb(), scene.valid_mask()
    assert rgb[..., 1].tolist() == [[85, 170], [0, 255]]  # 0.1/0.3*255 = 85, 0.2 -> 170, 0.5 -> clipped
    assert valid.tolist() == [[True, True], [False, True]]
    with open_scene(path) as scene:  # float data defaults to the percentile stretch, NaN left out
        assert scene.preset.name == "percentile"
        low, high = scene.stats()[0]
    # numpy's linear percentiles of {0.1, 0.2, 0.5}: 2 % -> 0.1 + 0.04 * 0.1 = 0.104; 98 % -> 0.2 + 0.96 * 0.3
    assert low == pytest.approx(0.104, abs=1e-6) and high == pytest.approx(0.488, abs=1e-6)


def test_int16_with_negative_values(tmp_path):
    data = np.array([[[-200, -50], [50, 150]]] * 3, dtype=np.int16)
    path = write(tmp_path / "int16.tif", data)
    rgb = np.asarray(read_image(path, preset="linear:-100,100"))
    assert rgb[..., 0].tolist() == [[0, 64], [191, 255]]  # -50 -> 50/200*255 = 63.75; 50 -> 191.25
    ramp = np.arange(-1000, 1000, dtype=np.int16).reshape(1, 40, 50).repeat(3, axis=0)
    with open_scene(write(tmp_path / "ramp.tif", ramp)) as scene:
        grey = scene.read_rgb()[..., 0].ravel()
    # 2 % of -1000..999 = -960.02, 98 % = 959.02; value 0 (index 1000) -> 960.02 / 1919.04 * 255 = 127.6
    assert grey[1000] == 128 and grey[0] == 0 and grey[-1] == 255


def test_four_band_uint16_reflectance_is_not_dark(tmp_path):
    """The issue's case: 0-4000 reflectance DNs used to come out 0-15 (scaled by bit depth)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4001, size=(4, 64, 64), dtype=np.uint16)
    path = write(tmp_path / "four.tif", data)
    rgb = np.asarray(load_image(str(path)))
    assert rgb.shape == (64, 64, 3)
    assert rgb.mean() > 100 and rgb.max() == 255  # bit-depth scaling gave mean ~8, max 15
    pixels = GeoRSCLIPProcessor.default(image_size=32)(images=str(path), return_tensors="np")["pixel_values"]
    assert pixels.mean() > -0.5  # black normalises to about -1.8


def test_six_band_uint16_reads(tmp_path):
    data = np.stack([np.full((16, 16), 1000 * (b + 1), dtype=np.uint16) for b in range(6)])
    data[:, :, 8:] += 500
    path = write(tmp_path / "six.tif", data)
    with pytest.raises(UnidentifiedImageError):
        Image.open(path)  # Pillow cannot read it at all
    rgb = np.asarray(load_image(path.read_bytes()))
    assert rgb.shape == (16, 16, 3)
    assert (rgb[:, :8] == 0).all() and (rgb[:, 8:] == 255).all()  # two values per band: 2 % and 98 % ends
    picked = np.asarray(read_image(path, bands=(6, 5, 4), preset="linear:0,6000"))
    assert picked[0, 0].tolist() == [255, 212, 170]  # 6000 -> 255, 5000/6000*255 = 212.5 -> 212, 4000 -> 170


def test_one_band_is_grey(tmp_path):
    data = np.array([[[0, 100], [200, 255]]], dtype=np.uint8)
    rgb = np.asarray(read_image(write(tmp_path / "grey.tif", data)))
    assert rgb.tolist() == [[[0] * 3, [100] * 3], [[200] * 3, [255] * 3]]


def test_png_scene_has_identity_transform_and_no_crs(tmp_path):
    path = tmp_path / "plain.png"
    Image.fromarray(np.full((4, 6, 3), 7, dtype=np.uint8)).save(path)
    with open_scene(path) as scene:
        assert scene.crs is None and scene.transform.is_identity and (scene.width, scene.height) == (6, 4)
        assert (scene.read_rgb() == 7).all()


# ------------------------------------------------------------------------------------------------ windows
def test_windows_share_one_stretch_computed_once(tmp_path, monkeypatch):
    rows, cols = np.mgrid[0:64, 0:64]
    ramp = (cols * 64 + rows).astype(np.uint16)[None].repeat(3, axis=0)  # 0..4095, brighter to the right
    path = write(tmp_path / "ramp.tif", ramp)
    calls = []
    original = raster_module.percentile_stats
    monkeypatch.setattr(raster_module, "percentile_stats", lambda *a, **k: calls.append(1) or original(*a, **k))
    with open_scene(path) as scene:
        whole = scene.read_rgb()
        left = scene.read_rgb((0, 0, 16, 64))
        right = scene.read_rgb((48, 10, 16, 20))
    assert len(calls) == 1
    assert np.array_equal(left, whole[:, :16]) and np.array_equal(right, whole[10:30, 48:])
    assert left.max() < 64 and right.min() > 190  # the left strip is dark, the right bright: one stretch


@pytest.mark.parametrize("nodata", [None, 0], ids=["no-mask", "nodata-mask"])
def test_window_outside_the_raster_is_black_and_invalid(tmp_path, nodata):
    path = write(tmp_path / "w.tif", np.full((3, 8, 8), 50, dtype=np.uint8), nodata=nodata)
    with open_scene(path) as scene:
        rgb, valid = scene.read_rgb((4, 4, 8, 8)), scene.valid_mask((4, 4, 8, 8))
    assert (rgb[:4, :4] == 50).all() and (rgb[4:] == 0).all() and (rgb[:, 4:] == 0).all()
    assert valid[:4, :4].all() and not valid[4:].any() and not valid[:, 4:].any()
    with open_scene(path) as scene:  # resampled: output pixel centres decide
        assert scene.valid_mask((-8, 0, 16, 8), out_size=(4, 2)).tolist() == [[False, False, True, True]] * 2


def test_small_out_size_reads_the_cog_overview(tmp_path):
    """Overviews are built from value 100, then the full resolution is rewritten to 200: a read that
    returns 100 came from the overview, not from decimating the full-resolution data."""
    source = write(tmp_path / "src.tif", np.full((3, 1024, 1024), 100, dtype=np.uint8),
                   tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(source, "r+") as dst:
        dst.build_overviews([2, 4, 8], rasterio.enums.Resampling.average)
        dst.write(np.full((3, 1024, 1024), 200, dtype=np.uint8))
    cog = tmp_path / "scene.cog.tif"
    rasterio.shutil.copy(source, cog, driver="COG", blocksize=256)
    with rasterio.open(cog) as src:
        assert src.overviews(1) == [2, 4, 8] and src.profile["tiled"]
    with open_scene(cog) as scene:
        assert (scene.read_rgb(window=(0, 0, 256, 256)) == 200).all()  # full resolution
        assert (scene.read_rgb(out_size=(128, 128)) == 100).all()  # 1/8: the last overview
        assert (scene.read_rgb(window=(512, 512, 512, 512), out_size=(64, 64)) == 100).all()
        assert scene.valid_mask(out_size=(128, 128)).shape == (128, 128)


# ------------------------------------------------------------------------------------------------ arrays
def test_to_uint8_rgb_and_processor_arrays():
    data = np.zeros((12, 8, 8), dtype=np.uint16)
    data[3], data[2], data[1] = 2200, 1600, 1150
    expected = np.array([[[102, 51, 13]] * 8] * 8, dtype=np.uint8)
    assert np.array_equal(to_uint8_rgb(data[[3, 2, 1]], "sentinel2-l2a"), expected)
    processor = GeoRSCLIPProcessor.default(image_size=32)
    ours = processor(images=[data], preset="sentinel2-l2a", bands=(4, 3, 2), return_tensors="np")
    reference = processor(images=[Image.fromarray(expected)], return_tensors="np")
    assert np.array_equal(ours["pixel_values"], reference["pixel_values"])
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 0] = True
    assert to_uint8_rgb(data[[3, 2, 1]], "sentinel2-l2a", nodata_mask=mask)[0, 0].tolist() == [0, 0, 0]


# ------------------------------------------------------------------------------------------------ bad input
def test_unknown_preset_names_it():
    with pytest.raises(RasterError, match="unknown preset 'sentinel3'"):
        parse_preset("sentinel3")
    with pytest.raises(RasterError, match="linear:5,1"):
        parse_preset("linear:5,1")
    with pytest.raises(RasterError, match="linear:a,b"):
        parse_preset("linear:a,b")


def test_band_out_of_range_names_band_and_file():
    with pytest.raises(RasterError, match=r"band index 5 out of range for .*rasterio__RGB.byte.tif.* 3 band"):
        open_scene(RGB_BYTE, bands=(5, 2, 1))
    with pytest.raises(RasterError, match="band index 0"):
        load_image(np.zeros((3, 4, 4), dtype=np.uint16), bands=(0, 1, 2))


def test_unreadable_raster(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(RasterError, match="cannot read raster .*bad.tif"):
        open_scene(bad)
    with pytest.raises(RasterError, match="cannot read raster .*missing.tif"):
        open_scene(tmp_path / "missing.tif")
    with pytest.raises(ImageDecodeError) as err:
        load_image(bad)
    assert err.value.kind == "not_an_image" and "bad.tif" in str(err.value)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(RGB_BYTE.read_bytes()[:400_000])
    with pytest.raises(ImageDecodeError) as err:
        load_image(cut)
    assert err.value.kind == "truncated" and "cut.tif" in str(err.value)  # its directory is at the end
    tiled = write(tmp_path / "tiled.tif", np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8),
                  tiled=True, blockxsize=256, blockysize=256)  # directory first, tiles after it
    with pytest.raises(ImageDecodeError) as err:
        load_image(tiled.read_bytes()[: tiled.stat().st_size // 2])
    assert err.value.kind == "truncated" and "<bytes>" in str(err.value) and not re.search("vsimem|[0-9a-f]{8}-[0-9a-f]{4}-", str(err.value))


def test_raster_over_the_pixel_limit_is_a_decompression_bomb(tmp_path):
    path = write(tmp_path / "big.tif", np.zeros((3, 40, 40), dtype=np.uint16))
    with pytest.raises(ImageDecodeError) as err:
        load_image(path, max_pixels=1000)
    assert err.value.kind == "decompression_bomb"


def test_builder_stream_and_evaluation_decode_a_raster_to_the_same_pixels(tmp_path):
    from modeling_georsclip.evaluation.datasets import decode_images
    from modeling_georsclip.training.stream import decode_pair

    data = np.random.default_rng(1).integers(0, 4000, size=(6, 24, 24), dtype=np.uint16)
    path = write(tmp_path / "six.tif", data)
    reference = np.asarray(read_image(path))
    streamed, caption, kind = decode_pair({"path": None, "bytes": path.read_bytes()}, b"fields", None)
    assert kind is None and caption == "fields"
    evaluated, kept, errors = decode_images([path])
    assert kept == [0] and errors == []
    assert np.array_equal(np.asarray(streamed), reference) and np.array_equal(np.asarray(evaluated[0]), reference)
    assert decode_pair({"path": str(tmp_path / "nope.tif"), "bytes": None}, "x", None)[2] == "missing_file"


def test_array_layouts():
    picture = np.random.default_rng(2).integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(picture)), picture)  # np.asarray(pil) layout, as is
    assert np.array_equal(np.asarray(load_image(picture.transpose(2, 0, 1).copy())), picture)  # (bands, H, W)
    reflectance = np.full((10, 12, 3), 0.2, dtype=np.float32)  # channels last, float
    assert (np.asarray(load_image(reflectance, preset="linear:0,0.3")) == 170).all()  # 0.2 / 0.3 * 255
    grey = np.array([[0, 1000], [2000, 3000]], dtype=np.uint16)
    assert np.asarray(load_image(grey, preset="linear:0,3000"))[..., 2].tolist() == [[0, 85], [170, 255]]
