"""Evaluation datasets behind one loader: ``load_eval_dataset(name_or_path, task)``.

Layouts (a local folder, or a Hub dataset id whose snapshot has the same layout):

- classification (AID, RESISC45, EuroSAT RGB, any image folder): ``ROOT/<class>/<image>``; class names are
  normalised as GeoRSCLIP does (``_`` and ``/`` to spaces, lowercase).
- retrieval (RSICD, RSITMD, UCM-captions, Sydney-captions): a Karpathy-style JSON
  (``images[].filename``, ``images[].split``, ``images[].sentences[].raw``) next to the image folder.
- selo (AIR-SLT): ``anno.json`` (or ``annotations/anno.json``) with ``caption``, ``jpg_name`` and ``points``
  (a list of polygons of ``[x, y]`` points) per query, images in ``imgs/``.

Classification and retrieval sets may also be ``datasets`` tables (a Hub dataset id or a local folder of
parquet files): an ``Image`` column plus a ``ClassLabel`` column (what ``imagefolder`` repos and most Hub
copies of AID / RESISC45 / EuroSAT give), or plus a caption column (a list of strings per image, or one string
per row with images repeated). Local folders in the layouts above keep their own loaders; a Hub id is read
with ``datasets.load_dataset`` first and, failing that, downloaded as a snapshot of those layouts.

Images are listed, not decoded, here; :func:`decode_images` decodes a batch, skipping and counting
unreadable files so a long evaluation never stops on one bad file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from ..data.filters import content_hash, dhash
from ..data.sources import IMAGE_EXTENSIONS
from ..imaging import ImageDecodeError, load_image
from ..io import sha256_file
from ..log import get_logger

logger = get_logger(__name__)

Task = Literal["classification", "retrieval", "selo"]
CAPTION_JSON_NAMES = ("dataset.json", "dataset_rsicd.json", "dataset_rsitmd.json", "dataset_ucm.json",
                      "dataset_sydney.json", "captions.json")
IMAGE_DIR_NAMES = ("images", "imgs", "RSICD_images", "RSITMD_images", "UCM_images", "Sydney_images")


@dataclass
class ClassificationSet:
    """Images with integer labels; ``classnames`` already normalised."""

    name: str
    classnames: list[str]
    images: list[Path | bytes]
    labels: list[int]
    source: str = ""


@dataclass
class RetrievalSet:
    """Images and captions; ``text_to_image[t]`` is the image index caption ``t`` describes."""

    name: str
    images: list[Path | bytes]
    captions: list[str]
    text_to_image: list[int]
    source: str = ""


@dataclass
class SeloQuery:
    """One AIR-SLT query: a caption and the polygons (``[[x, y], ...]``) it refers to in ``image``."""

    image: Path
    caption: str
    regions: list[list[list[float]]]


@dataclass
class SeloSet:
    name: str
    queries: list[SeloQuery] = field(default_factory=list)
    source: str = ""


def normalize_classname(name: str) -> str:
    """GeoRSCLIP's class-name normalisation: underscores and slashes become spaces, then lowercase."""
    return name.replace("_", " ").replace("/", " ").lower()


def resolve_root(name_or_path: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a Hub dataset id, downloaded (cached) with ``snapshot_download``."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"evaluation dataset {path} is not a folder")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name_or_path), repo_type="dataset"))
    except Exception as err:  # offline, unknown repo, no network: one clear line
        raise FileNotFoundError(
            f"{name_or_path!s} is neither a local folder nor a downloadable Hub dataset ({type(err).__name__}: {err})"
        ) from err


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def load_image_folder(root: str | os.PathLike, name: str | None = None) -> ClassificationSet:
    """An image-folder classification set (class = subfolder, sorted like torchvision's ImageFolder)."""
    root = resolve_root(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root} has no class subfolders (expected ROOT/<class>/<image>)")
    images, labels = [], []
    for label, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.rglob("*") if _is_image(p))
        images += files
        labels += [label] * len(files)
    if not images:
        raise ValueError(f"{root} has class folders but no images with extensions {sorted(IMAGE_EXTENSIONS)}")
    classnames = [normalize_classname(p.name) for p in class_dirs]
    return ClassificationSet(name or root.name, classnames, images, labels, source=str(root))


def _find_caption_json(root: Path) -> Path:
    if root.is_file():
        return root
    for candidate in CAPTION_JSON_NAMES:
        if (root / candidate).is_file():
            return root / candidate
    found = sorted(p for p in root.glob("*.json") if p.name != "anno.json")
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"no Karpathy-style caption JSON in {root}: expected one of {CAPTION_JSON_NAMES} or a single *.json"
    )


def _find_image(base: Path, entry: dict) -> Path:
    filename = entry["filename"]
    candidates = [base / entry.get("filepath", "") / filename, base / filename]
    candidates += [base / d / filename for d in IMAGE_DIR_NAMES]
    # a missing file is returned as is: decoding then skips and counts it
    return next((c for c in candidates if c.is_file()), candidates[0])


def load_caption_json(root: str | os.PathLike, split: str = "test", name: str | None = None) -> RetrievalSet:
    """A Karpathy-style caption set (RSICD, RSITMD, UCM-captions, Sydney-captions) restricted to ``split``."""
    base = resolve_root(root)
    json_path = _find_caption_json(base)
    base = json_path.parent
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        entries = data["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{json_path} is not a Karpathy-style caption file (needs 'images': [...]): {err}") from err
    images, captions, owner = [], [], []
    for number, entry in enumerate(entries):
        if entry.get("split", split) != split:
            continue
        try:
            sentences = [s["raw"].strip() for s in entry["sentences"]]
            image = _find_image(base, entry)
        except (KeyError, TypeError) as err:
            raise ValueError(f"{json_path}: images[{number}] lacks 'filename' or 'sentences[].raw' ({err})") from err
        sentences = [s for s in sentences if s]
        if not sentences:
            continue
        captions += sentences
        owner += [len(images)] * len(sentences)
        images.append(image)
    if not images:
        raise ValueError(f"{json_path} has no images in split {split!r}")
    return RetrievalSet(name or data.get("dataset") or base.name, images, captions, owner, source=str(json_path))


def load_airslt(root: str | os.PathLike, name: str = "AIR-SLT") -> SeloSet:
    """AIR-SLT semantic-localization queries from ``anno.json`` + ``imgs/``."""
    base = resolve_root(root)
    anno = next((p for p in (base / "anno.json", base / "annotations" / "anno.json") if p.is_file()), None)
    if anno is None:
        raise FileNotFoundError(f"no anno.json in {base} or {base / 'annotations'}")
    image_dir = base / "imgs" if (base / "imgs").is_dir() else base
    try:
        items = json.loads(anno.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{anno} is not valid JSON: {err}") from err
    queries = []
    for number, item in enumerate(items):
        try:
            regions = [[[float(x), float(y)] for x, y in polygon] for polygon in item["points"]]
            queries.append(SeloQuery(image_dir / item["jpg_name"], str(item["caption"]).strip(), regions))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{anno}: entry {number} needs caption, jpg_name and points polygons ({err})") from err
    return SeloSet(name, queries, source=str(anno))


CAPTION_COLUMNS = ("captions", "sentences", "caption", "text")


def load_datasets_table(
    name_or_path: str | os.PathLike, task: Task, split: str = "test", name: str | None = None
) -> ClassificationSet | RetrievalSet:
    """A classification or retrieval set from a ``datasets`` table (Hub id, or a local folder of parquet files).

    Images stay encoded (bytes) until :func:`decode_images`, so unreadable ones are skipped and counted there.
    """
    from datasets import ClassLabel, load_dataset
    from datasets import Image as ImageFeature

    table = load_dataset(str(name_or_path), split=split)
    image_column = next((c for c, f in table.features.items() if isinstance(f, ImageFeature)), None)
    if image_column is None:
        raise ValueError(f"{name_or_path} (split {split}) has no Image column; columns: {list(table.features)}")
    raw = table.cast_column(image_column, ImageFeature(decode=False))[image_column]
    images: list[Path | bytes] = [r["bytes"] if r.get("bytes") else Path(r["path"]) for r in raw]
    label = Path(str(name_or_path).rstrip("/")).name
    if task == "classification":
        label_column = next((c for c, f in table.features.items() if isinstance(f, ClassLabel)), None)
        if label_column is None:
            raise ValueError(f"{name_or_path} has no ClassLabel column for classification; columns: {list(table.features)}")
        classnames = [normalize_classname(n) for n in table.features[label_column].names]
        return ClassificationSet(name or label, classnames, images, list(table[label_column]), source=str(name_or_path))
    caption_column = next((c for c in CAPTION_COLUMNS if c in table.features), None)
    if caption_column is None:
        raise ValueError(f"{name_or_path} has none of the caption columns {CAPTION_COLUMNS}: {list(table.features)}")
    first_row: dict[bytes | Path, int] = {}  # one row per caption repeats the image: group rows by content
    ordered: list[Path | bytes] = []
    captions, owner = [], []
    for image, value in zip(images, table[caption_column], strict=True):
        sentences = [value] if isinstance(value, str) else list(value or [])
        sentences = [t.strip() for t in sentences if t and t.strip()]
        if not sentences:
            continue
        key = content_hash(image) if isinstance(image, bytes) else image
        if key not in first_row:
            first_row[key] = len(ordered)
            ordered.append(image)
        captions += sentences
        owner += [first_row[key]] * len(sentences)
    if not ordered:
        raise ValueError(f"{name_or_path} (split {split}) holds no captioned images")
    return RetrievalSet(name or label, ordered, captions, owner, source=str(name_or_path))


def _is_local_layout(name_or_path: str | os.PathLike) -> bool:
    path = Path(name_or_path).expanduser()
    return path.exists() and not any(path.rglob("*.parquet"))


def load_eval_dataset(
    name_or_path: str | os.PathLike, task: Task, split: str = "test", name: str | None = None
) -> ClassificationSet | RetrievalSet | SeloSet:
    """The one entry point: ``task`` picks the layout; ``name_or_path`` is a folder or a Hub dataset id."""
    if task in ("classification", "retrieval") and not _is_local_layout(name_or_path):
        try:
            return load_datasets_table(name_or_path, task, split, name)
        except Exception as err:  # not a datasets table (or offline): fall back to the folder layouts
            if Path(name_or_path).expanduser().exists():
                raise
            logger.info("%s is not a datasets table (%s); trying a snapshot of the folder layouts", name_or_path, err)
    if task == "classification":
        return load_image_folder(name_or_path, name)
    if task == "retrieval":
        return load_caption_json(name_or_path, split, name)
    if task == "selo":
        return load_airslt(name_or_path, name or "AIR-SLT")
    raise ValueError(f"unknown evaluation task {task!r}: use classification, retrieval or selo")


def decode_images(paths: Sequence[Path | bytes]) -> tuple[list[Image.Image], list[int], list[str]]:
    """Decode ``paths`` to RGB; returns (images, indices of the decoded ones, messages for the skipped)."""
    images, kept, errors = [], [], []
    for index, path in enumerate(paths):
        try:
            images.append(load_image(path))
            kept.append(index)
        except ImageDecodeError as err:  # kind names as in the builder and training stream reports
            errors.append(f"{err.kind}: {err}")
    for message in errors:
        logger.warning("skipped unreadable image: %s", message)
    return images, kept, errors


# ---------------------------------------------------------------------------------------------- de-duplication
def pixel_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the decoded 8-bit RGB pixels: the same image stored as PNG and TIFF, or renamed."""
    array = np.asarray(load_image(path))
    return hashlib.sha256(array.tobytes() + str(array.shape).encode()).hexdigest()


def difference_hash(path: str | os.PathLike, size: int = 16) -> int:
    """Perceptual dHash (``size``^2 bits): survives JPEG re-encoding and small resizes."""
    return dhash(load_image(path), size)


def shared_images(
    first: Iterable[str | os.PathLike],
    second: Iterable[str | os.PathLike],
    method: Literal["bytes", "pixels", "dhash"] = "pixels",
    max_distance: int = 10,
) -> set[Path]:
    """Images of ``first`` that also occur in ``second`` (RSICD and RSITMD share many images).

    ``bytes``: identical files; ``pixels``: identical decoded pixels; ``dhash``: 256-bit difference hashes
    within ``max_distance`` bits (re-encoded copies). Unreadable files never match.
    """
    def fingerprints(paths):
        out = {}
        for path in paths:
            try:
                out[Path(path)] = {"bytes": sha256_file, "pixels": pixel_digest, "dhash": difference_hash}[method](path)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                logger.warning("cannot fingerprint %s: %s", path, err)
        return out

    if method not in ("bytes", "pixels", "dhash"):
        raise ValueError(f"unknown duplicate method {method!r}: use bytes, pixels or dhash")
    left, right = fingerprints(first), fingerprints(second)
    if method != "dhash":
        seen = set(right.values())
        return {path for path, key in left.items() if key in seen}
    if not right:
        return set()
    others = list(right.values())
    return {
        path for path, key in left.items() if min(bin(key ^ other).count("1") for other in others) <= max_distance
    }


def drop_images(dataset: RetrievalSet, remove: set[Path]) -> tuple[RetrievalSet, int]:
    """A copy of ``dataset`` without the images in ``remove`` (and their captions); returns it and the count."""
    remove = {Path(p) for p in remove}
    keep = [i for i, path in enumerate(dataset.images) if Path(path) not in remove]
    new_index = {old: new for new, old in enumerate(keep)}
    captions, owner = [], []
    for caption, image in zip(dataset.captions, dataset.text_to_image, strict=True):
        if image in new_index:
            captions.append(caption)
            owner.append(new_index[image])
    kept_images = [dataset.images[i] for i in keep]
    return RetrievalSet(dataset.name, kept_images, captions, owner, dataset.source), len(dataset.images) - len(keep)


def deduplicate_against(
    train: RetrievalSet, test: RetrievalSet, method: Literal["bytes", "pixels", "dhash"] = "pixels", max_distance: int = 10
) -> tuple[RetrievalSet, int]:
    """Remove from ``train`` every image that occurs in ``test`` so training on one set and testing on the
    other leaks nothing; returns the cleaned training set and the number of images removed."""
    cleaned, removed = drop_images(train, shared_images(train.images, test.images, method, max_distance))
    logger.info("removed %d %s images shared with %s", removed, train.name, test.name)
    return cleaned, removed
