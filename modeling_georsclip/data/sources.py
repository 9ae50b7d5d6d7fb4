"""Inputs of the RS5M builder, each yielding ``Item``s (one image with all its captions) in a fixed order.

- ``csv_items``: a captions CSV (``file,caption[,source,latitude,...]``, one row per caption) and an
  image folder; an image with several captions keeps all of them, in CSV order.
- ``tar_items``: RS5M release tars (webdataset layout: members ``KEY.img_content``, ``KEY.img_name``,
  ``KEY.caption``; img2dataset's ``KEY.jpg``/``KEY.txt`` is accepted too), re-keyed by the original image
  name. Members with absolute paths, ``..``, links or devices are rejected before anything is read.
- ``folder_items``: a label-only image folder, captions from a labels CSV (``file,label``) or generated
  by an image-to-text model.
"""

from __future__ import annotations

import csv
import glob
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..log import get_logger
from .geometa import GEO_COLUMNS

logger = get_logger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")
TAR_IMAGE_FIELDS = ("img_content", "jpg", "jpeg", "png", "webp", "tif", "tiff")
TAR_CAPTION_FIELDS = ("caption", "txt")
TAR_NAME_FIELDS = ("img_name",)


@dataclass
class Item:
    """One input image: where its bytes are, and its captions (dicts with ``caption``, ``source``, geo)."""

    index: int
    key: str
    image: str | bytes  # a file path, or the encoded bytes (from a tar)
    captions: list[dict] = field(default_factory=list)


def _replace_undecodable(text: str) -> str:
    """Lone surrogates (non-UTF-8 bytes read with surrogateescape) become U+FFFD outside the caption."""
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def _csv_geo(row: dict, where: str) -> dict:
    """Geo columns given explicitly in a CSV row (empty cell -> absent)."""
    values = {}
    for name in GEO_COLUMNS:
        raw = _replace_undecodable(row.get(name) or "").strip()
        if not raw:
            continue
        if name in ("utm_zone", "date"):
            values[name] = raw
            continue
        try:
            values[name] = float(raw)
        except ValueError as err:
            raise ValueError(f"{where}: column {name!r} value {raw!r} is not a number") from err
    return values


def _inside(folder: Path, relative: str, where: str) -> Path:
    """``folder / relative``, refusing absolute names and ``..`` (checked on the name: symlinked files are fine)."""
    parts = relative.replace("\\", "/").split("/")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or ".." in parts:
        raise ValueError(f"{where}: file {relative!r} points outside the image folder {folder}")
    return folder / relative


def csv_items(
    captions_csv: str | os.PathLike, images_dir: str | os.PathLike, default_source: str, start: int = 0
) -> Iterator[Item]:
    """Items from a captions CSV, grouped by ``file`` in order of first appearance."""
    captions_csv, images_dir = Path(captions_csv), Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    groups: dict[str, list[dict]] = {}
    # surrogateescape: a non-UTF-8 byte in one caption must not abort the build; the builder skips that
    # caption and counts it as ``caption_not_utf8`` (imaging.decode_caption).
    with open(captions_csv, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "caption"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{captions_csv}: missing column(s) {sorted(missing)}; need file,caption[,source,...]")
        for line, row in enumerate(reader, start=2):
            where = f"{captions_csv}:{line}"
            name = (row["file"] or "").strip()
            if not name:
                raise ValueError(f"{where}: empty 'file' value")
            source = _replace_undecodable(row.get("source") or "").strip() or default_source
            caption = {"caption": row["caption"] or "", "source": source}
            caption.update(_csv_geo(row, where))
            groups.setdefault(name, []).append(caption)
    for index, (name, captions) in enumerate(groups.items()):
        if index < start:
            continue
        path = _inside(images_dir, name, str(captions_csv))
        yield Item(index=index, key=name, image=str(path), captions=captions)


def _check_member(archive: str, member: tarfile.TarInfo) -> None:
    """Reject members that would escape an extraction folder, or are not regular files."""
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"{archive}: unsafe member {name!r} (absolute path or '..' escaping the archive)")
    if member.issym() or member.islnk():
        raise ValueError(f"{archive}: member {name!r} is a link (to {member.linkname!r}); links are not allowed")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"{archive}: member {name!r} is not a regular file")


def _split_member(name: str) -> tuple[str, str]:
    """webdataset convention: ``dir/base.ext.more`` -> (``dir/base``, ``ext.more``)."""
    directory, base = posixpath.split(name)
    stem, _, suffix = base.partition(".")
    return posixpath.join(directory, stem), suffix.lower()


def release_fields(available: Iterable[str]) -> tuple[str | None, str | None, str | None]:
    """The fields of a release sample holding its image, caption and original image name (None: absent).

    Shared by the builder (tar members) and the training stream (``datasets`` webdataset columns).
    """
    have = set(available)

    def first(names: Sequence[str]) -> str | None:
        return next((name for name in names if name in have), None)

    return first(TAR_IMAGE_FIELDS), first(TAR_CAPTION_FIELDS), first(TAR_NAME_FIELDS)


def _tar_sample(archive: str, sample_key: str, fields: dict[str, bytes], index: int, source: str) -> Item:
    image_field, caption_field, name_field = release_fields(fields)
    image = fields.get(image_field) if image_field else None
    caption_bytes = fields.get(caption_field) if caption_field else None
    name_bytes = fields.get(name_field) if name_field else None
    key = posixpath.basename(sample_key)
    if name_bytes is not None:
        key = name_bytes.decode("utf-8", errors="replace").strip()
        if not key or "/" in key or "\\" in key or key in (".", ".."):
            raise ValueError(f"{archive}: sample {sample_key!r} has an unsafe img_name {key!r}")
    # undecodable bytes stay as lone surrogates: the builder counts the caption as ``caption_not_utf8``
    caption = caption_bytes.decode("utf-8", errors="surrogateescape").strip() if caption_bytes is not None else ""
    return Item(index=index, key=key, image=image if image is not None else b"", captions=[
        {"caption": caption, "source": source}
    ])


def tar_items(pattern: str | Sequence[str], default_source: str, start: int = 0) -> Iterator[Item]:
    """Items from release tars (sorted paths; member order within a tar), re-keyed by ``img_name``."""
    paths = sorted({p for pat in ([pattern] if isinstance(pattern, str) else pattern) for p in glob.glob(pat)})
    if not paths:
        raise FileNotFoundError(f"no tar file matches {pattern!r}")
    index = 0
    for archive in paths:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            current: str | None = None
            fields: dict[str, bytes] = {}
            for member in members:
                if not member.isfile():
                    continue
                sample_key, suffix = _split_member(member.name)
                if sample_key != current:
                    if current is not None:
                        if index >= start:
                            yield _tar_sample(archive, current, fields, index, default_source)
                        index += 1
                    current, fields = sample_key, {}
                if index >= start:
                    handle = tar.extractfile(member)
                    fields[suffix] = handle.read() if handle is not None else b""
            if current is not None:
                if index >= start:
                    yield _tar_sample(archive, current, fields, index, default_source)
                index += 1


def folder_items(
    folder: str | os.PathLike,
    default_source: str,
    labels_csv: str | os.PathLike | None = None,
    captioner: Callable | None = None,
    caption_template: str = "{label}",
    start: int = 0,
) -> Iterator[Item]:
    """Items from an image folder (sorted relative paths); captions from labels or a captioner."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if labels_csv is None and captioner is None:
        raise ValueError("an image folder needs --labels CSV or --captioner MODEL for its captions")
    labels: dict[str, list[dict]] = {}
    if labels_csv is not None:
        with open(labels_csv, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"file", "label"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{labels_csv}: need columns file,label[,source]")
            for row in reader:
                label = (row["label"] or "").strip().replace("_", " ")
                source = (row.get("source") or "").strip() or default_source
                caption = caption_template.format(label=label) if label else ""
                labels.setdefault(row["file"].strip(), []).append({"caption": caption, "source": source})
    files = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    for index, name in enumerate(files):
        if index < start:
            continue
        captions = labels.get(name)
        if captions is None and captioner is not None:
            captions = [{"caption": _generate_caption(captioner, folder / name), "source": default_source}]
        yield Item(index=index, key=name, image=str(folder / name), captions=captions or [])


def _generate_caption(captioner: Callable, path: Path) -> str:
    from ..imaging import load_image

    try:
        image = load_image(path)
    except (OSError, ValueError) as err:
        logger.debug("no caption for %s: %s", path, err)
        return ""  # the builder counts the image as invalid when it fails to decode
    return str(captioner(image)).strip()


class PipelineCaptioner:
    """Caption images with a transformers image-text-to-text model (transformers 5 removed "image-to-text")."""

    def __init__(self, model: str, prompt: str | None = None, max_new_tokens: int = 40):
        from transformers import pipeline

        self.pipe = pipeline("image-text-to-text", model=model)
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens

    def __call__(self, image) -> str:
        out = self.pipe(images=image, text=self.prompt, max_new_tokens=self.max_new_tokens)
        first = out[0] if isinstance(out, list) else out
        text = first.get("generated_text", "") if isinstance(first, dict) else str(first)
        return text if isinstance(text, str) else str(text)
