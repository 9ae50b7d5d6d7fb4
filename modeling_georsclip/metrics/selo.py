"""Semantic-localization (SeLo) metrics Rsu, Rda, Ras and Rmi of the AIR-SLT benchmark.

A vectorised re-implementation of ``evaluations/SLM.py`` from xiaoyuan1996/SemanticLocalizationMetrics
(the reference released with AIR-SLT), with its exact arithmetic: integer truncation of polygon points
(mask) and of region centres, the same OpenCV/SciPy filters, and the same constants. The image filters are
library calls (OpenCV polygon fill and box filter, SciPy maximum filter and 8-connected labelling); only
the per-centre distance bookkeeping, a few lines of NumPy, is written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage

RSU_BETA = 0.707
RSU_EPS = 1e-7
RAS_EXPAND_FACTOR = 1.5
RAS_FILTER_TIMES = 5
RAS_BOX_SIZE = 50
RAS_MAX_FILTER_SIZE = 1000
RAS_SCALE_BETA = 3.0
RAS_CENTRE_MIN_PROB = 0.5
RDA_ETA = 0.5
RMI_WEIGHTS = (0.4, 0.35, 0.25)  # Rsu, 1 - Ras, Rda

Polygon = Sequence[Sequence[float]]


def region_mask(shape: tuple[int, int], regions: Sequence[Polygon]) -> np.ndarray:
    """Float (H, W) mask of the regions: points truncated to int32 and filled by OpenCV (as SLM.py)."""
    mask = np.zeros(shape, dtype=np.float64)
    cv2.fillPoly(mask, [np.asarray(poly, dtype=np.float64).astype(np.int32) for poly in regions], 1)
    return mask


def region_centres(regions: Sequence[Polygon]) -> np.ndarray:
    """(n, 3) int array of (x, y, radius): truncated mean point and 1.5 x mean point distance, truncated."""
    out = np.empty((len(regions), 3), dtype=np.int64)
    for i, poly in enumerate(regions):
        points = np.asarray(poly, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise ValueError(f"region {i} is not a list of [x, y] points: {poly!r}")
        # sequential left-to-right sums (cumsum), the summation order of the reference's functools.reduce
        centre = np.trunc(np.cumsum(points, axis=0)[-1] / len(points))
        offsets = points - centre
        radius = np.trunc(np.mean(np.sqrt((offsets * offsets).sum(axis=1))) * RAS_EXPAND_FACTOR)
        if radius <= 0:
            raise ValueError(f"region {i} is degenerate (radius 0): {poly!r}")
        out[i] = (int(centre[0]), int(centre[1]), int(radius))
    return out


def attention_centres(prob: np.ndarray) -> np.ndarray:
    """(m, 2) int array of (x, y) attention centres, strongest first.

    The 8-bit map is smoothed by five 50 x 50 box filters; pixels equal to the maximum of their
    1000 x 1000 neighbourhood (and > 0) form 8-connected blobs whose truncated centroids are the
    candidates, kept where ``prob >= 0.5``.
    """
    gray = np.asarray(prob * 255.0, dtype=np.uint8)
    for _ in range(RAS_FILTER_TIMES):
        gray = cv2.boxFilter(gray, ddepth=-1, ksize=(RAS_BOX_SIZE, RAS_BOX_SIZE))
    peaks = (ndimage.maximum_filter(gray, size=RAS_MAX_FILTER_SIZE) == gray) & (gray > 0)
    labels, count = ndimage.label(peaks, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.empty((0, 2), dtype=np.int64)
    rows, cols = np.nonzero(labels)
    ids = labels[rows, cols]
    sizes = np.bincount(ids, minlength=count + 1)[1:]
    centre_rows = np.bincount(ids, weights=rows, minlength=count + 1)[1:] / sizes
    centre_cols = np.bincount(ids, weights=cols, minlength=count + 1)[1:] / sizes
    centres = np.stack([np.trunc(centre_cols), np.trunc(centre_rows)], axis=1).astype(np.int64)
    values = prob[centres[:, 1], centres[:, 0]]
    order = np.argsort(-values, kind="stable")
    centres, values = centres[order], values[order]
    return centres[values >= RAS_CENTRE_MIN_PROB]


def _rsu(prob: np.ndarray, mask: np.ndarray) -> float:
    inside = np.sum(np.multiply(prob, mask))
    total = np.sum(prob)
    covered = np.sum(mask)
    if covered == 0:
        raise ValueError("the regions cover no pixel of the probability map")
    height, width = mask.shape
    left = inside / (total - inside + RSU_EPS)
    right = (height * width - covered) / covered
    return float(1.0 - np.exp(-RSU_BETA * left * right))


def _ras(regions: np.ndarray, centres: np.ndarray) -> float:
    radius = regions[:, 2].astype(np.float64)
    if len(centres) == 0:
        # the reference then scores only the first region, with offset = its radius: Ras = 1
        fractions = np.array([1.0])
    else:
        dist = np.sqrt(((regions[:, None, :2] - centres[None, :, :]) ** 2).sum(axis=2))
        inside = dist <= regions[:, 2:3]
        counts = inside.sum(axis=1)
        mean_inside = np.where(inside, dist, 0.0).sum(axis=1) / np.maximum(counts, 1)
        offsets = np.where(counts > 0, mean_inside, radius)
        fractions = offsets / radius
    granular = np.mean(fractions)
    return float((np.exp(RAS_SCALE_BETA * granular) - 1) / (np.exp(RAS_SCALE_BETA) - 1))


def _rda(regions: np.ndarray, centres: np.ndarray) -> float:
    scores = []
    for x, y, r in regions:
        if len(centres):
            near = centres[np.sqrt(((centres - (x, y)) ** 2).sum(axis=1)) <= r]
        else:
            near = centres
        if len(near) <= 1:
            scores.append(float(len(near)))
            continue
        spread = np.mean(np.sqrt(((near - near.mean(axis=0)) ** 2).sum(axis=1))) / r
        scores.append(0.5 * (1 - spread) + np.exp(-RDA_ETA * (len(near) + 2)))
    return float(np.mean(scores))


def selo_scores(probmap, regions: Sequence[Polygon]) -> dict[str, float]:
    """SeLo metrics of one probability map against its annotated regions.

    ``probmap``: 2-D float array in [0, 1] (H x W; the published protocol uses ``gray / 255`` of the
    8-bit map). ``regions``: polygons, each a list of ``[x, y]`` pixel points (x = column), as in AIR-SLT
    ``anno.json``'s ``points``. Returns ``Rsu`` (salient-area proportion, higher is better), ``Rda``
    (attention concentration, higher better), ``Ras`` (attention-centre offset, lower better) and
    ``Rmi = 0.4 Rsu + 0.35 (1 - Ras) + 0.25 Rda``.
    """
    prob = np.asarray(probmap, dtype=np.float64)
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"probmap must be a non-empty 2-D array, got shape {prob.shape}")
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError("probmap values must be finite and within [0, 1]")
    if len(regions) == 0:
        raise ValueError("selo_scores needs at least one region polygon")
    region_info = region_centres(regions)
    rsu = _rsu(prob, region_mask(prob.shape, regions))
    centres = attention_centres(prob)
    ras = _ras(region_info, centres)
    rda = _rda(region_info, centres)
    w_su, w_as, w_da = RMI_WEIGHTS
    return {"Rsu": rsu, "Rda": rda, "Ras": ras, "Rmi": w_su * rsu + w_as * (1 - ras) + w_da * rda}
