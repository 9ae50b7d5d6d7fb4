"""Curation filters: perceptual hashes, near-duplicate index, dedup in a build, outlier scoring, PUB11 report."""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from modeling_georsclip.data.build import build
from modeling_georsclip.data.filters import (
    DuplicateFilter,
    FilterSettings,
    NearDuplicateIndex,
    OutlierFilter,
    OutlierScorer,
    dhash,
    hamming,
    parse_filters,
    phash,
)
from modeling_georsclip.data.sources import csv_items
from modeling_georsclip.imaging import load_image
from modeling_georsclip.processing import GeoRSCLIPProcessor
from modeling_georsclip.testing import tiny_clip

from conftest import SAMPLES

IMAGES = SAMPLES / "images"


def near_copy(path: Path) -> bytes:
    """Half-size, JPEG quality 60 re-encode of an image."""
    image = load_image(path)
    small = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=60)
    return buffer.getvalue()


def test_dhash_of_a_horizontal_ramp_is_all_ones_and_flips_when_mirrored():
    ramp = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1)))
    assert dhash(ramp) == 2**64 - 1
    assert dhash(ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) == 0


@pytest.mark.parametrize("hasher", [dhash, phash])
def test_perceptual_hash_separates_real_images_and_matches_near_copies(hasher):
    paths = sorted(IMAGES.iterdir())[:12]
    hashes = {p.name: hasher(load_image(p)) for p in paths}
    closest_distinct = min(hamming(hashes[a], hashes[b]) for a, b in itertools.combinations(hashes, 2))
    farthest_copy = max(hamming(hashes[p.name], hasher(load_image(near_copy(p)))) for p in paths)
    assert farthest_copy <= 6 < closest_distinct


def test_near_duplicate_index_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    stored = [int(x) for x in rng.integers(0, 2**63, size=300, dtype=np.int64)]
    queries = [s ^ (1 << int(b)) ^ (1 << int(c)) for s, b, c in zip(stored[:50], rng.integers(0, 64, 50),
                                                                   rng.integers(0, 64, 50), strict=True)]
    queries += [int(x) for x in rng.integers(0, 2**63, size=50, dtype=np.int64)]
    for threshold in (0, 2, 5):
        index = NearDuplicateIndex(threshold)
        for value in stored:
            index.add(value)
        for query in queries:
            brute = any(hamming(query, s) <= threshold for s in stored)
            assert (index.find(query) is not None) == brute


def test_duplicate_filter_exact_near_and_threshold():
    # An image whose near copy is not bit-identical in pHash, so a threshold below the distance misses it.
    for original in sorted(IMAGES.iterdir()):
        data, copy = original.read_bytes(), near_copy(original)
        distance = hamming(phash(load_image(data)), phash(load_image(copy)))
        if distance > 0:
            break
    assert 0 < distance <= 6
    strict = DuplicateFilter(near_threshold=distance - 1)
    loose = DuplicateFilter(near_threshold=distance)
    for dedup in (strict, loose):
        assert dedup.check(b"a" * 32, phash(load_image(data))) is None
        assert dedup.check(b"a" * 32, phash(load_image(data))) == "exact"
    assert strict.check(b"b" * 32, phash(load_image(copy))) is None
    assert loose.check(b"b" * 32, phash(load_image(copy))) == "near"


def test_parse_filters():
    assert parse_filters("outlier, keyword,dedup") == ("keyword", "dedup", "outlier")
    assert parse_filters("none") == ()
    with pytest.raises(ValueError, match="unknown filter"):
        parse_filters("keyword,blur")


def _write(tmp: Path, rows: list[tuple[str, str]]) -> Path:
    path = tmp / "captions.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    return path


def _brightness_scorer(images):
    """Stand-in scorer: the mean brightness in [0, 1] (bright = 'remote sensing')."""
    return [float(np.asarray(im.convert("L")).mean()) / 255.0 for im in images]


def _flat(value: int) -> bytes:
    rng = np.random.default_rng(value)
    pixels = np.clip(value + rng.integers(-20, 20, size=(8, 8, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((48, 48), Image.Resampling.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def test_full_pipeline_counts_match_the_pub11_columns(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "rs.jpg").write_bytes((IMAGES / "retrievalsys__00013.jpg").read_bytes())
    (images / "rs_exact.jpg").write_bytes((IMAGES / "retrievalsys__00013.jpg").read_bytes())
    (images / "rs_near.jpg").write_bytes(near_copy(IMAGES / "retrievalsys__00013.jpg"))
    (images / "bright.png").write_bytes(_flat(230))
    (images / "dark.png").write_bytes(_flat(20))
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rows = [
        ("rs.jpg", "a satellite view of a playground"), ("rs.jpg", "two courts"),  # 1 of 2 passes keywords
        ("rs_exact.jpg", "aerial photo of a court"),
        ("rs_near.jpg", "aerial photo, smaller copy"),
        ("bright.png", "satellite image of snow"), ("bright.png", "an aerial view of snow"),
        ("dark.png", "a satellite image at night"),
        ("broken.jpg", "a satellite image, broken"),
        ("cat.jpg", "my cat on the sofa"),  # keyword filter drops it before the image is opened
    ]
    captions = _write(tmp_path, rows)
    settings = FilterSettings(enabled=("keyword", "invalid", "dedup", "outlier"), outlier_threshold=0.5)
    outlier = OutlierFilter(_brightness_scorer, threshold=0.5)
    result = build(lambda s: csv_items(captions, images, "t", start=s), tmp_path / "out", config="pub11",
                   split="train", shard_size=100, settings=settings, outlier=outlier)
    r = result.report
    # rs.jpg's mean brightness is below 0.5 too: it is removed as an outlier, only "bright" remains.
    assert (r.input, r.after_keyword_filter, r.invalid_removed, r.duplicates_removed, r.outliers_removed,
            r.remaining) == (9, 7, 1, 2, 2, 2)
    assert r.duplicates_by_kind == {"exact": 1, "near": 1}
    assert r.invalid_by_kind == {"not_an_image": 1}
    table = pq.read_table(tmp_path / "out/data/pub11/train-00000.parquet").to_pylist()
    assert [(t["key"], t["caption"]) for t in table] == [
        ("bright.png", "satellite image of snow"), ("bright.png", "an aerial view of snow")]


def test_outlier_filter_threshold_decisions():
    scores = [0.1, 0.49, 0.5, 0.9]
    keep = OutlierFilter(lambda images: scores, threshold=0.5).keep([None] * 4)
    assert keep == [False, False, True, True]
    with pytest.raises(ValueError, match="shape"):
        OutlierFilter(lambda images: [0.5], threshold=0.5).keep([None, None])


def test_outlier_scorer_with_a_tiny_model_matches_clip_forward():
    model = tiny_clip(seed=3)
    processor = GeoRSCLIPProcessor.default(image_size=32)
    positive, negative = ["a satellite image.", "an aerial photo."], ["a selfie.", "a cartoon.", "a menu."]
    scorer = OutlierScorer(model=model, processor=processor, positive=positive, negative=negative)
    images = [load_image(IMAGES / name) for name in ("remoteclip__airport.jpg", "dsifn__A_0_2.png",
                                                     "cliprsicd__stadium_1.jpg")]
    scores = scorer(images)
    # Independent reference: the plain CLIPModel forward's logits_per_image over all prompts.
    inputs = processor(images=images, text=positive + negative, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    expected = torch.softmax(logits, dim=-1)[:, : len(positive)].sum(-1).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    # The decision is "score >= threshold": a threshold between two scores splits the images there.
    order = np.argsort(scores)
    cut = float((scores[order[0]] + scores[order[1]]) / 2)
    kept = OutlierFilter(scorer, threshold=cut).keep(images)
    assert kept == [bool(s >= cut) for s in scores] and sum(kept) == 2
