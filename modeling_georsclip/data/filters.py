"""The RS5M curation steps as small composable filters, and the report with the paper's PUB11 columns.

Order, as in the paper: keyword filter on captions -> invalid/corrupt image removal -> exact and
near-duplicate removal -> outlier removal ("is this a remote-sensing image?", zero-shot with GeoRSCLIP).

Perceptual hashes are written here (``dhash``, ``phash``: a dozen lines of numpy/PIL/scipy) rather than
taken from ``imagehash``, which is not a dependency of this project and offers no index for finding
near matches among millions of hashes; ``NearDuplicateIndex`` does that by multi-index hashing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from ..log import get_logger
from .keywords import RS_KEYWORDS, matches_rs_keywords

logger = get_logger(__name__)

FILTER_NAMES: tuple[str, ...] = ("keyword", "invalid", "dedup", "outlier")

# The paper's PUB11 statistics columns, in order (all counted in image-text pairs).
REPORT_COLUMNS: tuple[str, ...] = (
    "input",
    "after_keyword_filter",
    "invalid_removed",
    "duplicates_removed",
    "outliers_removed",
    "remaining",
)


def parse_filters(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"keyword,dedup"`` -> ``("keyword", "dedup")`` in canonical order; ``""``/``"none"`` -> ``()``."""
    if spec is None:
        return ()
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["none"]:
        return ()
    unknown = sorted(set(names) - set(FILTER_NAMES))
    if unknown:
        raise ValueError(f"unknown filter(s) {unknown}: choose from {', '.join(FILTER_NAMES)}")
    return tuple(name for name in FILTER_NAMES if name in names)


# ----------------------------------------------------------------------------- keyword
def keyword_filter(captions: Sequence[str], keywords: Sequence[str] = RS_KEYWORDS) -> list[str]:
    """The captions that mention a remote-sensing keyword (an image keeps only those)."""
    return [c for c in captions if matches_rs_keywords(c, keywords)]


# ----------------------------------------------------------------------------- hashes
def content_hash(data: bytes) -> bytes:
    """SHA-256 of the encoded file: equal for byte-identical copies."""
    return hashlib.sha256(data).digest()


def dhash(image: Image.Image, size: int = 8) -> int:
    """Difference hash: sign of horizontal gradients on a (size+1) x size grey thumbnail -> size*size bits."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def phash(image: Image.Image, size: int = 8, oversample: int = 4) -> int:
    """DCT hash: low-frequency DCT coefficients of a 32x32 grey thumbnail above their median -> size*size bits."""
    from scipy.fft import dctn

    side = size * oversample
    grey = np.asarray(image.convert("L").resize((side, side), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(grey, norm="ortho")[:size, :size]
    bits = (low > np.median(low)).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


PERCEPTUAL_HASHES: dict[str, Callable[[Image.Image], int]] = {"dhash": dhash, "phash": phash}


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return (a ^ b).bit_count()


class NearDuplicateIndex:
    """Find a stored 64-bit hash within ``threshold`` bits of a query without comparing against all of them.

    Multi-index hashing: split the bits into ``threshold + 1`` bands; two hashes within ``threshold`` bits
    agree exactly on at least one band (pigeonhole), so only hashes sharing a band value are compared.
    """

    def __init__(self, threshold: int, bits: int = 64):
        if threshold < 0 or threshold >= bits:
            raise ValueError(f"near-duplicate threshold must be in [0, {bits}), got {threshold}")
        self.threshold = threshold
        bands = threshold + 1
        edges = np.linspace(0, bits, bands + 1).round().astype(int)
        self._bands = [(int(lo), int(hi - lo)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        self._tables: list[dict[int, list[int]]] = [{} for _ in self._bands]

    def _keys(self, value: int) -> list[int]:
        return [(value >> shift) & ((1 << width) - 1) for shift, width in self._bands]

    def find(self, value: int) -> int | None:
        """A stored hash within the threshold, or ``None``."""
        for table, key in zip(self._tables, self._keys(value), strict=True):
            for other in table.get(key, ()):
                if hamming(value, other) <= self.threshold:
                    return other
        return None

    def add(self, value: int) -> None:
        for table, key in zip(self._tables, self._keys(value), strict=True):
            table.setdefault(key, []).append(value)


class DuplicateFilter:
    """Exact (content hash) and near (perceptual hash, ``near_threshold`` bits) duplicate detection.

    The first image seen wins; later copies are reported as ``"exact"`` or ``"near"``. ``near_threshold``
    of ``None`` disables near-duplicate detection.
    """

    def __init__(self, near_threshold: int | None = 6):
        self.near_threshold = near_threshold
        self._exact: set[bytes] = set()
        self._near = NearDuplicateIndex(near_threshold) if near_threshold is not None else None

    def check(self, digest: bytes, perceptual: int | None) -> str | None:
        """``"exact"``, ``"near"`` or ``None`` (new image: remembered)."""
        if digest in self._exact:
            return "exact"
        if self._near is not None and perceptual is not None and self._near.find(perceptual) is not None:
            return "near"
        self.remember(digest, perceptual)
        return None

    def remember(self, digest: bytes, perceptual: int | None) -> None:
        """Record a kept image (also used to restore the state of a resumed build)."""
        self._exact.add(digest)
        if self._near is not None and perceptual is not None:
            self._near.add(perceptual)


# ----------------------------------------------------------------------------- outliers
RS_PROMPTS: tuple[str, ...] = (
    "a satellite image.",
    "an aerial photograph.",
    "a remote sensing image.",
    "an overhead view of the earth's surface.",
)
NOT_RS_PROMPTS: tuple[str, ...] = (
    "a photo taken at ground level.",
    "a close-up photo of an object.",
    "a portrait photo of a person.",
    "a drawing or illustration.",
    "a screenshot of text or a document.",
    "a product photo.",
)


class OutlierScorer:
    """P(remote-sensing image) by zero-shot classification with a GeoRSCLIP (or any CLIP) checkpoint.

    Each prompt is one class; the score is the softmax mass on ``positive`` prompts. ``model_dir`` is a
    local folder or Hub id holding a CLIP checkpoint and processor. ``precision`` (``inference.PRECISIONS``)
    is the scorer's inference precision, recorded in the build report.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        *,
        model=None,
        processor=None,
        positive: Sequence[str] = RS_PROMPTS,
        negative: Sequence[str] = NOT_RS_PROMPTS,
        batch_size: int = 32,
        precision: str = "fp32",
        device=None,
    ):
        from ..inference import load_model, prepare_for_inference

        if model is None:
            if model_dir is None:
                raise ValueError("OutlierScorer needs model_dir or model + processor")
            model, processor = load_model(model_dir, device, precision)
        elif precision != getattr(model, "inference_precision", "fp32"):
            model = prepare_for_inference(model, precision, device)
        if processor is None:
            raise ValueError("OutlierScorer needs a processor with the model")
        if not positive or not negative:
            raise ValueError("OutlierScorer needs at least one positive and one negative prompt")
        self.model, self.processor, self.batch_size = model, processor, batch_size
        self.precision = model.inference_precision
        self.num_positive = len(positive)
        prompts = list(positive) + list(negative)
        self.head = model.zero_shot_head(prompts, ["{}"], processor, mode="openclip")

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Scores in [0, 1], one per image."""
        import torch

        if not images:
            return np.zeros(0, dtype=np.float32)
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        embeds = self.model.image_embeddings(pixels, batch_size=self.batch_size)
        probs = torch.softmax(self.model.zero_shot_logits(embeds, self.head), dim=-1)
        return probs[:, : self.num_positive].sum(dim=-1).numpy().astype(np.float32)


@dataclass
class OutlierFilter:
    """Keep an image when ``scorer(image) >= threshold``."""

    scorer: Callable[[Sequence[Image.Image]], Sequence[float]]
    threshold: float = 0.5

    def keep(self, images: Sequence[Image.Image]) -> list[bool]:
        scores = np.asarray(self.scorer(images), dtype=np.float64)
        if scores.shape != (len(images),):
            raise ValueError(f"outlier scorer returned shape {scores.shape} for {len(images)} images")
        return [bool(s >= self.threshold) for s in scores]


# ----------------------------------------------------------------------------- settings and report
@dataclass(frozen=True)
class FilterSettings:
    """Which curation steps run, with their parameters (part of a build's resume fingerprint)."""

    enabled: tuple[str, ...] = ("invalid",)
    keywords: tuple[str, ...] = RS_KEYWORDS
    # On the vendored RS images pHash puts distinct images >= 20 bits apart and half-size JPEG-q60 copies
    # <= 2 bits from their original (dHash: >= 19 and <= 5), hence pHash with a 6-bit default.
    near_threshold: int | None = 6
    perceptual_hash: str = "phash"
    outlier_threshold: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "enabled", parse_filters(self.enabled))
        if self.perceptual_hash not in PERCEPTUAL_HASHES:
            raise ValueError(f"unknown perceptual hash {self.perceptual_hash!r}: use {sorted(PERCEPTUAL_HASHES)}")
        if not 0.0 <= self.outlier_threshold <= 1.0:
            raise ValueError(f"outlier threshold must be in [0, 1], got {self.outlier_threshold}")

    def on(self, name: str) -> bool:
        return name in self.enabled


@dataclass
class CurationReport:
    """Counts of image-text pairs per curation step (the paper's PUB11 columns) plus details."""

    input: int = 0
    after_keyword_filter: int = 0
    invalid_removed: int = 0
    duplicates_removed: int = 0
    outliers_removed: int = 0
    remaining: int = 0
    images_input: int = 0
    images_remaining: int = 0
    invalid_by_kind: dict[str, int] = field(default_factory=dict)
    duplicates_by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, other: CurationReport | dict) -> None:
        """Accumulate another report (or its dict)."""
        data = other if isinstance(other, dict) else asdict(other)
        for name, value in data.items():
            if isinstance(value, dict):
                bucket = getattr(self, name)
                for kind, count in value.items():
                    bucket[kind] = bucket.get(kind, 0) + int(count)
            elif hasattr(self, name):
                setattr(self, name, getattr(self, name) + int(value))

    def count(self, bucket: str, kind: str, pairs: int) -> None:
        mapping = getattr(self, bucket)
        mapping[kind] = mapping.get(kind, 0) + pairs

    def to_dict(self) -> dict:
        return asdict(self)

    def table_rows(self) -> list[tuple[str, int]]:
        """``(column, pairs)`` in the paper's order, for the dataset card."""
        return [(name, getattr(self, name)) for name in REPORT_COLUMNS]
