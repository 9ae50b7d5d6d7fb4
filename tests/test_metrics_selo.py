"""selo_scores: hand-checked cases and an independent, loop-by-loop re-derivation of SLM.py's definitions.

The reference (xiaoyuan1996/SemanticLocalizationMetrics evaluations/SLM.py) is not vendored, so CI compares
against the re-derivation below; the fetched reference itself agreed to 0.0 on 59 random maps (see the
closing note of issue 5).
"""

import math
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import maximum_filter

from modeling_georsclip.metrics import selo_scores
from modeling_georsclip.metrics.selo import region_centres, region_mask

MODULES = Path(__file__).resolve().parents[1] / "modeling_georsclip" / "metrics" / "modules"
SQUARE = [[100, 100], [200, 100], [200, 200], [100, 200]]


# ------------------------------------------------------------------ the definitions, one step at a time
def centre_radius_by_definition(poly):
    xs = [p[0] for p in poly]
    ys = [p[1] for p in poly]
    total_x = 0.0
    total_y = 0.0
    for x, y in zip(xs, ys, strict=True):
        total_x += x
        total_y += y
    cx, cy = int(total_x / len(poly)), int(total_y / len(poly))
    radius = int(sum(math.dist(p, (cx, cy)) for p in poly) / len(poly) * 1.5)
    return cx, cy, radius


def blobs_by_flood_fill(binary):
    """8-connected components (row, col lists) by breadth-first search, in raster order of first pixel."""
    seen = np.zeros_like(binary, dtype=bool)
    blobs = []
    for r0, c0 in zip(*np.nonzero(binary), strict=True):
        if seen[r0, c0]:
            continue
        queue, blob = deque([(r0, c0)]), []
        seen[r0, c0] = True
        while queue:
            r, c = queue.popleft()
            blob.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < binary.shape[0] and 0 <= cc < binary.shape[1] and binary[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        queue.append((rr, cc))
        blobs.append(blob)
    return blobs


def slm_by_definition(prob, regions):
    mask = np.zeros(prob.shape)
    cv2.fillPoly(mask, [np.array(p, np.int32) for p in regions], 1)
    inside, total, area = float((prob * mask).sum()), float(prob.sum()), float(mask.sum())
    rsu = 1 - math.exp(-0.707 * inside / (total - inside + 1e-7) * (prob.size - area) / area)

    gray = np.asarray(prob * 255.0, dtype=np.uint8)
    for _ in range(5):
        gray = cv2.boxFilter(gray, ddepth=-1, ksize=(50, 50))
    peaks = (maximum_filter(gray, size=1000) == gray) & (gray > 0)
    centres = []
    for blob in blobs_by_flood_fill(peaks):
        row = sum(r for r, _ in blob) / len(blob)
        col = sum(c for _, c in blob) / len(blob)
        centres.append((int(col), int(row)))
    centres = [c for c in sorted(centres, key=lambda c: -prob[c[1], c[0]]) if prob[c[1], c[0]] >= 0.5]

    regions_cr = [centre_radius_by_definition(p) for p in regions]
    if not centres:
        fractions = [1.0]
    else:
        fractions = []
        for x, y, r in regions_cr:
            near = [math.dist((x, y), c) for c in centres if math.dist((x, y), c) <= r]
            fractions.append((sum(near) / len(near) if near else r) / r)
    g = sum(fractions) / len(fractions)
    ras = (math.exp(3 * g) - 1) / (math.exp(3) - 1)

    rda_values = []
    for x, y, r in regions_cr:
        near = [c for c in centres if math.dist((x, y), c) <= r]
        if len(near) <= 1:
            rda_values.append(float(len(near)))
            continue
        mx = sum(c[0] for c in near) / len(near)
        my = sum(c[1] for c in near) / len(near)
        spread = sum(math.dist((mx, my), c) for c in near) / len(near) / r
        rda_values.append(0.5 * (1 - spread) + math.exp(-0.5 * (len(near) + 2)))
    rda = sum(rda_values) / len(rda_values)
    return {"Rsu": rsu, "Rda": rda, "Ras": ras, "Rmi": 0.4 * rsu + 0.35 * (1 - ras) + 0.25 * rda}


def random_case(rng, size_range=(200, 500), plateaus=False):
    h, w = rng.integers(*size_range, 2)
    yy, xx = np.mgrid[0:h, 0:w]
    prob = rng.uniform(0, 0.2) * rng.random((h, w))
    for _ in range(rng.integers(1, 5)):
        cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(15, 120)
        prob += rng.uniform(0.3, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    prob = np.round(prob * 4) / 4 if plateaus else np.uint8(255 * prob) / 255.0
    regions = []
    for _ in range(rng.integers(1, 4)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 8)))
        radii = rng.uniform(20, 250, len(angles))
        regions.append([[cx + r * np.cos(a), cy + r * np.sin(a)] for a, r in zip(angles, radii, strict=True)])
    return prob, regions


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("seed", range(8))
def test_matches_definition_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    prob, regions = random_case(rng, plateaus=seed % 2 == 1)
    assert region_mask(prob.shape, regions).sum() > 0  # fixed seeds: the polygons do overlap the map
    ours, ref = selo_scores(prob, regions), slm_by_definition(prob, regions)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key


def test_several_attention_centres_in_a_large_map():
    """Blobs > 1000 px apart give separate local maxima (exercises Ras/Rda with several centres)."""
    prob = np.zeros((700, 2600))
    for cx in (300, 1400, 2400):
        prob[250:450, cx - 100 : cx + 100] = 1.0
    regions = [[[150, 150], [1550, 150], [1550, 550], [150, 550]], [[2250, 200], [2550, 200], [2550, 500]]]
    ours, ref = selo_scores(prob, regions), slm_by_definition(prob, regions)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key
    assert 0 < ours["Rda"] < 1


def test_hand_checked_constant_map():
    # 0.6 everywhere: one blob (the whole map), centroid (149.5, 149.5) -> (149, 149), prob 0.6 >= 0.5.
    # Square 100..200 fills 101 x 101 px: inside/outside = area/(H*W - area), so Rsu = 1 - exp(-0.707).
    # Region centre (150, 150), radius int(1.5 * 50 * sqrt(2)) = 106; offset sqrt(2).
    out = selo_scores(np.full((300, 300), 0.6), [SQUARE])
    assert out["Rsu"] == pytest.approx(1 - math.exp(-0.707), abs=1e-9)
    ras = (math.exp(3 * math.sqrt(2) / 106) - 1) / (math.exp(3) - 1)
    assert out["Ras"] == pytest.approx(ras, abs=1e-12)
    assert out["Rda"] == 1.0
    assert out["Rmi"] == pytest.approx(0.4 * (1 - math.exp(-0.707)) + 0.35 * (1 - ras) + 0.25, abs=1e-9)


def test_hand_checked_no_confident_centre():
    # 0.4 < 0.5 everywhere: no attention centre, so Ras = 1 (offset = radius) and Rda = 0.
    out = selo_scores(np.full((300, 300), 0.4), [SQUARE])
    assert out["Ras"] == 1.0 and out["Rda"] == 0.0


def test_hand_checked_two_equal_blobs():
    # Two identical bright squares 180 px apart: equal blurred maxima, two centres 180 px apart, both inside
    # the region (centre (250, 200), radius int(1.5 * hypot(150, 100)) = 270): Rda = 0.5 (1 - 90/270) + e^-2.
    prob = np.zeros((400, 600))
    prob[190:211, 150:171] = 1.0
    prob[190:211, 330:351] = 1.0
    out = selo_scores(prob, [[[100, 100], [400, 100], [400, 300], [100, 300]]])
    assert out["Rda"] == pytest.approx(0.5 * (1 - 90 / 270) + math.exp(-2), abs=1e-12)


def test_truncation_of_points_and_centres():
    assert tuple(region_centres([[[0.9, 0.9], [3.9, 0.9], [3.9, 2.9]]])[0][:2]) == (2, 1)  # 2.9 -> 2, 1.57 -> 1
    assert tuple(region_centres([[[0, 0], [10, 0], [10, 10], [0, 10]]])[0]) == (5, 5, 10)  # int(7.07 * 1.5)
    mask = region_mask((8, 8), [[[1.9, 1.9], [4.9, 1.9], [4.9, 4.9], [1.9, 4.9]]])
    assert mask.sum() == 16 and mask[1:5, 1:5].all()  # points truncated to 1..4


def test_bad_inputs_are_rejected_clearly():
    with pytest.raises(ValueError, match="cover no pixel"):
        selo_scores(np.full((50, 50), 0.5), [[[100, 100], [120, 100], [120, 120]]])
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        selo_scores(np.full((50, 50), 2.0), [SQUARE])
    with pytest.raises(ValueError, match="degenerate"):
        selo_scores(np.full((50, 50), 0.5), [[[10, 10], [10, 10], [10, 10]]])


def test_evaluate_module_matches_python_api():
    import evaluate

    rng = np.random.default_rng(11)
    cases = [random_case(rng, size_range=(150, 220)) for _ in range(2)]
    cases = [(p, r) for p, r in cases if region_mask(p.shape, r).sum() > 0]
    module = evaluate.load(str(MODULES / "selo_scores"))
    got = module.compute(probmap=[p.tolist() for p, _ in cases], regions=[r for _, r in cases])
    expected = [selo_scores(p, r) for p, r in cases]
    for key in ("Rsu", "Rda", "Ras", "Rmi"):
        assert got[key] == pytest.approx(np.mean([e[key] for e in expected]), abs=1e-12)
