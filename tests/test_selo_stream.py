"""SeLo throughput plumbing: crops of several scenes stream to the model in full batches, the results equal a
scene-by-scene run, and the cell-grid heat map is bit-identical to per-pixel summed-area tables."""

import numpy as np
import torch
from PIL import Image

from modeling_georsclip.evaluation.datasets import SeloQuery, SeloSet
from modeling_georsclip.evaluation.fixtures import SAMPLES
from modeling_georsclip.evaluation.selo import (
    embed_windows,
    evaluate_selo,
    heat_grid,
    probability_map,
    selo_windows,
    stream_window_embeddings,
    window_crops,
)
from modeling_georsclip.processing import GeoRSCLIPProcessor
from modeling_georsclip.testing import tiny_clip


def pixel_tables(scores, windows, shape):
    """The per-pixel summed-area tables the cell grid replaces (the previous implementation)."""
    height, width = shape
    row0, row1, col0, col1 = windows.T
    sums, counts = np.zeros((height + 1, width + 1)), np.zeros((height + 1, width + 1), dtype=np.int64)
    for rows, cols, sign in ((row0, col0, 1), (row0, col1, -1), (row1, col0, -1), (row1, col1, 1)):
        np.add.at(sums, (rows, cols), sign * scores.astype(np.float64))
        np.add.at(counts, (rows, cols), sign)
    sums = sums.cumsum(axis=0).cumsum(axis=1)[:height, :width]
    return sums / np.maximum(counts.cumsum(axis=0).cumsum(axis=1)[:height, :width], 1)


def test_cell_grid_heat_map_is_bit_identical():
    rng = np.random.default_rng(1)
    for shape in ((1565, 1616), (900, 700)):
        windows = selo_windows(*shape)
        scores = rng.normal(size=len(windows)).astype(np.float32)
        np.testing.assert_array_equal(heat_grid(scores, windows, shape).expand(), pixel_tables(scores, windows, shape))
    windows = np.array([[10, 60, 5, 35], [0, 20, 0, 70]])  # a strip no window covers stays 0
    heat = heat_grid(np.array([1.0, 3.0]), windows, (90, 70)).expand()
    assert heat[15, 20] == 2.0 and heat[70, 10] == 0.0 and heat[40, 20] == 1.0


def test_probability_map_of_the_cell_grid_equals_the_full_float_map():
    """evaluate_selo scales the grid's cells to 8 bits; it must give the full map's pixels in both modes."""
    rng = np.random.default_rng(2)
    shape = (1565, 1616)
    windows = selo_windows(*shape)
    scores = rng.normal(size=len(windows)).astype(np.float32)
    for mode in ("paper", "clean"):
        from_grid = probability_map(heat_grid(scores, windows, shape), mode)
        from_pixels = probability_map(pixel_tables(scores, windows, shape), mode)
        for grid_array, pixel_array in zip(from_grid, from_pixels, strict=True):
            np.testing.assert_array_equal(grid_array, pixel_array)


class CountingModel(torch.nn.Module):
    """Wraps a model's image_embeddings and records each batch size it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def image_embeddings(self, pixels, batch_size=64):
        self.batches.append(len(pixels))
        return self.model.image_embeddings(pixels, batch_size=batch_size)


def test_crops_of_all_scenes_stream_in_full_batches():
    model = tiny_clip(image_size=32, patch_size=8)
    processor = GeoRSCLIPProcessor.default(32)
    full = np.asarray(Image.open(SAMPLES / "images" / "mmrotate__dota_demo.jpg").convert("RGB"))
    scenes = [full[:600, :700], full[500:1100, 200:900], full[:520, :520]]
    windows = [selo_windows(*s.shape[:2], sizes=(256,)) for s in scenes]
    counting = CountingModel(model)
    out = list(stream_window_embeddings(counting, processor, [(k, s, w) for k, (s, w) in
                                                              enumerate(zip(scenes, windows, strict=True))],
                                        mode="clean", batch_size=8))
    total = sum(len(w) for w in windows)
    assert [key for key, *_ in out] == [0, 1, 2]
    assert counting.batches == [8] * (total // 8) + ([total % 8] if total % 8 else [])
    assert any(len(w) % 8 for w in windows), "the fixture must have scenes ending mid-batch"
    for (_, scene, streamed_windows, embeds), w in zip(out, windows, strict=True):
        assert streamed_windows is w
        pixels = processor(images=window_crops(scene, w, "clean"), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(embeds, model.image_embeddings(pixels), atol=1e-5, rtol=0)
        torch.testing.assert_close(embed_windows(model, processor, scene, w, "clean", batch_size=5), embeds,
                                   atol=1e-5, rtol=0)


def test_evaluate_selo_over_two_scenes_with_an_unreadable_one(tmp_path):
    model = tiny_clip(image_size=32, patch_size=8)
    processor = GeoRSCLIPProcessor.default(32)
    full = Image.open(SAMPLES / "images" / "mmrotate__dota_demo.jpg").convert("RGB")
    full.crop((0, 0, 800, 700)).save(tmp_path / "a.jpg", quality=95)
    full.crop((400, 300, 1200, 1000)).save(tmp_path / "b.jpg", quality=95)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    box = [[[100, 100], [500, 100], [500, 400], [100, 400]]]
    queries = [SeloQuery(tmp_path / "a.jpg", "buses", box), SeloQuery(tmp_path / "bad.jpg", "x", box),
               SeloQuery(tmp_path / "b.jpg", "a building", box), SeloQuery(tmp_path / "a.jpg", "cars", box)]
    result = evaluate_selo(model, processor, SeloSet("two", queries), mode="paper", batch_size=16,
                           output_dir=tmp_path / "overlays")
    assert result["n_queries"] == 3 and result["n_unreadable"] == 1 and result["n_skipped_queries"] == 1
    assert [q["index"] for q in result["per_query"]] == [0, 2, 3]
    single = evaluate_selo(model, processor, SeloSet("one", [queries[2]]), mode="paper", batch_size=16)
    assert abs(single["per_query"][0]["Rmi"] - result["per_query"][1]["Rmi"]) < 1e-6
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3
