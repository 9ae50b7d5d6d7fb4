"""localize and classify_tiles on real rasters: georeferenced outputs, exact SeLo maps, clear bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine

from modeling_georsclip import classify_tiles, localize
from modeling_georsclip.evaluation.selo import heat_grid, probability_map, selo_windows
from modeling_georsclip.inference import load_model
from modeling_georsclip.localize import HeatMap, localize_scene
from modeling_georsclip.testing import save_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
RGB_BYTE = ROOT / "tests/data/rasterio__RGB.byte.tif"  # 791 x 718, 3-band uint8, UTM 18N, nodata 0
PNG_SCENE = ROOT / "modeling_georsclip/samples/rs-samples/images/mmrotate__P0004__1__0___0.png"  # 285 wide, 294 high
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
QUERIES = ["a harbour with ships", "green forest"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def model_and_processor(tiny):
    return load_model(tiny)


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loc") / "full"
    localize.main(["--model", str(tiny), "--scene", str(RGB_BYTE), "--query", QUERIES[0], "--query", QUERIES[1],
                   "--window-sizes", "256,512", "--output", str(out)])
    return out


def geojson_points(document: dict) -> np.ndarray:
    points = []
    for feature in document["features"]:
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        points += [p for polygon in polygons for ring in polygon for p in ring]
    return np.asarray(points, dtype=np.float64)


# ----------------------------------------------------------------------------- the heat map
def test_strip_wise_map_equals_selo_full_size_map(monkeypatch):
    """Strips blurred with a halo give exactly selo's full-size clean probability map; map-scale = block means."""
    shape = (718, 791)
    windows = selo_windows(*shape, sizes=(256, 512))
    scores = np.random.default_rng(0).normal(size=len(windows)).astype(np.float32)
    expected = probability_map(heat_grid(scores, windows, shape).expand(), "clean")[0]
    heat = HeatMap("q", heat_grid(scores, windows, shape), None, Affine.identity(), windows, scores)
    monkeypatch.setattr(localize, "_strip_rows", lambda width, *factors: 96)  # strips thinner than the kernel
    np.testing.assert_array_equal(heat.probability(), expected.astype(np.float32))
    # 4x coarser: mean of each 4 x 4 block, edge blocks over the pixels they hold (NaN padding, nanmean)
    padded = np.full((720, 792), np.nan)
    padded[:718, :791] = expected
    blocks = np.nanmean(padded.reshape(180, 4, 198, 4), axis=(1, 3))
    np.testing.assert_allclose(heat.probability(4), blocks, atol=1e-6)
    assert heat.profile(4)["transform"] == Affine.scale(4) and heat.profile(4)["width"] == 198


# ----------------------------------------------------------------------------- localize outputs
def test_outputs_carry_the_scene_crs_and_transform(full_run):
    names = sorted(p.name for p in full_run.iterdir())
    assert names == sorted(f"{n}_{s}.{e}" for n, s in ((1, "a-harbour-with-ships"), (2, "green-forest"))
                           for e in ("tif", "geojson", "png"))
    with rasterio.open(RGB_BYTE) as src, rasterio.open(full_run / "1_a-harbour-with-ships.tif") as out:
        assert out.crs == src.crs and out.transform == src.transform
        assert (out.width, out.height, out.count, out.dtypes[0]) == (791, 718, 1, "float32")
        assert out.profile["tiled"] and out.compression.value.lower() == "deflate"
        assert out.tags()["QUERY"] == QUERIES[0]
        prob = out.read(1)
        bounds = src.bounds
    assert 0.0 <= prob.min() and prob.max() <= 1.0 and prob.max() > 0.5
    document = json.loads((full_run / "1_a-harbour-with-ships.geojson").read_text())
    assert document["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32618"
    assert document["features"] and document["features"][0]["properties"]["rank"] == 1
    points = geojson_points(document)
    assert (points[:, 0] >= bounds.left).all() and (points[:, 0] <= bounds.right).all()
    assert (points[:, 1] >= bounds.bottom).all() and (points[:, 1] <= bounds.top).all()
    assert Image.open(full_run / "2_green-forest.png").size == (791, 718)


def test_map_scale_and_wgs84_geojson(tiny, full_run, tmp_path):
    out = tmp_path / "scaled"
    localize.main(["--model", str(tiny), "--scene", str(RGB_BYTE), "--query", QUERIES[0], "--window-sizes", "256,512",
                   "--map-scale", "4", "--geojson-crs", "EPSG:4326", "--output", str(out)])
    with rasterio.open(RGB_BYTE) as src, rasterio.open(out / "1_a-harbour-with-ships.tif") as scaled, \
            rasterio.open(full_run / "1_a-harbour-with-ships.tif") as full:
        assert scaled.crs == src.crs and scaled.transform == src.transform @ Affine.scale(4)
        assert (scaled.width, scaled.height) == (198, 180)
        padded = np.full((720, 792), np.nan)
        padded[:718, :791] = full.read(1)
        np.testing.assert_allclose(scaled.read(1), np.nanmean(padded.reshape(180, 4, 198, 4), axis=(1, 3)), atol=1e-6)
    document = json.loads((out / "1_a-harbour-with-ships.geojson").read_text())
    assert "crs" not in document  # RFC 7946
    points = geojson_points(document)
    # RGB.byte.tif lies off the Bahamas (UTM 18N): lon -79..-76.5, lat 23.5..25.6 (lon first)
    assert ((-79.5 < points[:, 0]) & (points[:, 0] < -76)).all() and ((23 < points[:, 1]) & (points[:, 1] < 26)).all()


def test_reflectance_raster_gives_the_heat_map_of_the_8bit_image(model_and_processor, tmp_path):
    """uint16 = value * 10000 / 255 read with preset linear:0,10000 localizes like the 8-bit file itself.

    Windows read at full resolution (256 px) give identical crops, so identical scores. Larger windows are
    averaged while reading (GDAL, raw values, before the preset): a 2 x 2 mean of 8-bit values that ends in .5
    rounds either way once stored as reflectance, so those crops may differ by one 8-bit level.
    """
    model, processor = model_and_processor
    with rasterio.open(RGB_BYTE) as src:
        profile, data = src.profile, src.read()
    reflectance = np.rint(data.astype(np.float64) * 10000 / 255).astype(np.uint16)
    path = tmp_path / "reflectance.tif"
    with rasterio.open(path, "w", **{**profile, "dtype": "uint16"}) as dst:
        dst.write(reflectance)
    image = localize_scene(model, processor, RGB_BYTE, QUERIES, window_sizes=(256, 512))
    encoded = localize_scene(model, processor, path, QUERIES, window_sizes=(256, 512), preset="linear:0,10000")
    full_res = (image[0].windows[:, 1] - image[0].windows[:, 0]) == 256
    for a, b in zip(image, encoded, strict=True):
        assert b.crs == a.crs and b.transform == a.transform
        np.testing.assert_array_equal(b.scores[full_res], a.scores[full_res])
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-3)
        difference = np.abs(b.probability() - a.probability())
        assert difference.max() <= 3 / 255 and difference.mean() < 0.5 / 255


def test_png_scene_works_in_pixel_coordinates(tiny, tmp_path):
    out = tmp_path / "png"
    localize.main(["--model", str(tiny), "--scene", str(PNG_SCENE), "--query", "a harbour", "--window-sizes", "256",
                   "--output", str(out)])
    with rasterio.open(out / "1_a-harbour.tif") as result:
        assert result.crs is None and result.transform == Affine.identity() and result.shape == (294, 285)
    document = json.loads((out / "1_a-harbour.geojson").read_text())
    assert document["crs"] is None  # GeoJSON 2008: no CRS can be assumed -> pixel coordinates
    points = geojson_points(document)
    assert points.min() >= 0 and points[:, 0].max() <= 285 and points[:, 1].max() <= 294


# ----------------------------------------------------------------------------- classify_tiles
def test_tile_windows_hand_checked():
    windows = classify_tiles.tile_windows(718, 791, 256)
    assert len(windows) == 3 * 4
    assert sorted({int(w[0]) for w in windows}) == [0, 256, 462]  # last row moved back inside: 718 - 256
    assert sorted({int(w[2]) for w in windows}) == [0, 256, 512, 535]  # 791 - 256
    assert ((windows[:, 1] - windows[:, 0]) == 256).all() and ((windows[:, 3] - windows[:, 2]) == 256).all()


def test_classify_tiles_outputs(tiny, tmp_path, capsys):
    out = tmp_path / "tiles"
    labels = ["sea", "forest", "cloud", "dense residential"]
    classify_tiles.main(["--model", str(tiny), "--scene", str(RGB_BYTE), "--labels", ", ".join(labels),
                         "--tile", "256", "--output", str(out)])
    summary = json.loads(capsys.readouterr().out)
    assert summary["tiles"] == 12 and 0 < summary["classified"] <= 12
    document = json.loads((out / "tiles.geojson").read_text())
    assert document["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32618" and document["labels"] == labels
    assert len(document["features"]) == summary["classified"]
    with rasterio.open(RGB_BYTE) as src:
        bounds, crs, transform = src.bounds, src.crs, src.transform
    for feature in document["features"]:
        props = feature["properties"]
        probs = np.array([props[f"p_{label}"] for label in labels])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5) and props["label"] == labels[int(probs.argmax())]
        points = geojson_points({"features": [feature]})
        assert (points[:, 0] >= bounds.left - 1e-6).all() and (points[:, 0] <= bounds.right + 1e-6).all()
        assert (points[:, 1] >= bounds.bottom - 1e-6).all() and (points[:, 1] <= bounds.top + 1e-6).all()
    with rasterio.open(out / "classes.tif") as classes:
        assert classes.crs == crs and classes.transform == transform @ Affine.scale(256)
        assert classes.shape == (3, 4) and classes.nodata == 255
        grid = classes.read(1)
        colours = classes.colormap(1)
    assert (grid != 255).sum() == summary["classified"] and set(grid[grid != 255].tolist()) <= set(range(4))
    cell = document["features"][0]["properties"]
    assert grid[cell["row"], cell["col"]] == cell["label_index"]
    assert colours[0][:3] != colours[1][:3]
    assert Image.open(out / "classes.png").width > 791  # scene plus legend

    import geopandas  # the `geo` extra, part of `test`: the GeoParquet twin of tiles.geojson is written and read back

    frame = geopandas.read_parquet(out / "tiles.parquet")
    assert summary["files"] == ["tiles.geojson", "tiles.parquet", "classes.tif", "classes.png"]
    assert frame.crs.to_epsg() == 32618 and len(frame) == summary["classified"]
    assert list(frame["label"]) == [f["properties"]["label"] for f in document["features"]]
    left, bottom, right, top = frame.total_bounds
    points = geojson_points(document)
    assert (left, right) == pytest.approx((points[:, 0].min(), points[:, 0].max()))
    assert (bottom, top) == pytest.approx((points[:, 1].min(), points[:, 1].max()))


def test_classify_skips_nodata_cells(model_and_processor, tmp_path):
    model, processor = model_and_processor
    with rasterio.open(RGB_BYTE) as src:
        profile, data = src.profile, src.read()
    data[:, :, :400] = 0  # nodata (0): all of the first cell column, 144 of 256 px of the second
    path = tmp_path / "holes.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    result = classify_tiles.classify_scene(model, processor, path, ["sea", "land"], tile=256)
    grid = result.classified.reshape(result.grid)
    assert not grid[:, 0].any() and not grid[:, 1].any() and grid[1, 2]
    assert (result.probabilities[~result.classified] == 0).all()


# ----------------------------------------------------------------------------- bad input
@pytest.fixture()
def broken(tmp_path) -> Path:
    path = tmp_path / "broken.tif"
    path.write_text("not a raster")
    return path


@pytest.mark.parametrize("extra, needle", [
    (["--scene", str(RGB_BYTE), "--preset", "sentinel3"], "sentinel3"),
    (["--scene", str(RGB_BYTE), "--bands", "4,3,2"], "band index 4"),
    (["--scene", "BROKEN"], "broken.tif"),
    (["--scene", str(PNG_SCENE), "--geojson-crs", "EPSG:4326"], "EPSG:4326"),
    (["--scene", str(RGB_BYTE), "--geojson-crs", "EPSG:999999"], "EPSG:999999"),
    (["--scene", str(PNG_SCENE), "--window-sizes", "512"], "512"),
])
def test_localize_bad_input_exits_2_and_writes_nothing(tiny, tmp_path, broken, capsys, extra, needle):
    out = tmp_path / "never"
    extra = [str(broken) if value == "BROKEN" else value for value in extra]
    with pytest.raises(SystemExit) as exit_info:
        localize.main(["--model", str(tiny), "--query", "q", "--output", str(out), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--scene", str(RGB_BYTE), "--labels", "sea,land", "--preset", "sentinel3"], "sentinel3"),
    (["--scene", str(RGB_BYTE), "--labels", "sea,land,sea"], "'sea'"),
    (["--scene", "BROKEN", "--labels", "sea,land"], "broken.tif"),
])
def test_classify_bad_input_exits_2_and_writes_nothing(tiny, tmp_path, broken, capsys, extra, needle):
    out = tmp_path / "never"
    extra = [str(broken) if value == "BROKEN" else value for value in extra]
    with pytest.raises(SystemExit) as exit_info:
        classify_tiles.main(["--model", str(tiny), "--output", str(out), *extra])
    assert exit_info.value.code == 2 and needle in capsys.readouterr().err
    assert not out.exists()


def test_failure_while_writing_leaves_no_files(tiny, tmp_path, monkeypatch):
    """An error after some files were written (here: the PNG of the 2nd query) leaves the folder as it was."""
    out = tmp_path / "kept"
    out.mkdir()
    (out / "mine.txt").write_text("user file")
    calls = []

    def failing_overlay(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        return original(*args, **kwargs)

    original = localize.write_overlay
    monkeypatch.setattr(localize, "write_overlay", failing_overlay)
    with pytest.raises(SystemExit):
        localize.main(["--model", str(tiny), "--scene", str(PNG_SCENE), "--query", "a", "--query", "b",
                       "--window-sizes", "256", "--output", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


@pytest.mark.slow
def test_module_entry_points(tiny, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "modeling_georsclip.localize", "--model", str(tiny), "--scene",
                           str(PNG_SCENE), "--query", "ships", "--window-sizes", "256", "--output", str(out)],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["queries"][0]["files"][0] == "1_ships.tif"
    proc = subprocess.run([sys.executable, "-m", "modeling_georsclip.classify_tiles", "--model", str(tiny), "--scene",
                           str(PNG_SCENE), "--labels", "a,b", "--preset", "nope", "--output", str(out / "t")],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "nope" in proc.stderr and not (out / "t").exists()


# ----------------------------------------------------------------------------- memory


def _rss_mib() -> float:
    import resource

    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim and /proc exist on Linux only")
def test_free_heap_goes_back_to_the_os_after_every_batch(model_and_processor, monkeypatch):
    """What kept a 10,000 px localize under 2 GiB: freed heap blocks pinned by a few live ones are returned."""
    from modeling_georsclip import geo

    blocks = [bytes(2000) for _ in range(100_000)]  # ~200 MB of malloc'd blocks (above pymalloc's 512 bytes)
    survivors = blocks[::200]  # one live block in every ~400 KB keeps the heap from shrinking by itself
    del blocks
    pinned = _rss_mib()
    geo.release_free_heap()
    assert pinned - _rss_mib() > 100, "malloc_trim returned nothing to the OS"
    del survivors

    calls = []
    monkeypatch.setattr(geo, "release_free_heap", lambda: calls.append(1))
    model, processor = model_and_processor
    windows = selo_windows(718, 791, (256,))
    localize_scene(model, processor, RGB_BYTE, ["ships"], window_sizes=(256,), batch_size=4)
    assert len(calls) == -(-len(windows) // 4)  # once per batch
