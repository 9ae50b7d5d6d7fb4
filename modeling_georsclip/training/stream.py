"""Streaming training loader for image-caption pairs: RS5M parquet shards (local or Hub), the RS5M release's
webdataset tars (local or Hub), CSV + image folders.

    dataset = build_train_dataset([SourceSpec("path/or/hub-id", config="pub11")], processor=processor,
                                  batch_size=256, rank=accelerator.process_index,
                                  world_size=accelerator.num_processes)
    loader = TrainLoader(dataset, num_workers=8)
    for batch in loader:            # dict: pixel_values, input_ids, attention_mask
        ...
    loader.skipped                  # Counter of corrupt samples by kind, all workers of this process
    state = loader.state_dict()     # JSON-serialisable; loader.load_state_dict(state) resumes exactly

Design (and why some of it is hand-written):

- Reading is ``datasets``: ``load_dataset(..., streaming=True)`` for the parquet/webdataset shards of a local
  folder or Hub repo (the release tars' ``img_content``/``caption``/``img_name`` columns are mapped to
  ``image``/``caption`` and the image's key, see ``_standard_columns``), ``IterableDataset.from_generator`` for CSV + image folders, ``concatenate_datasets`` or
  ``interleave_datasets(probabilities=...)`` to mix sources, and ``split_dataset_by_node`` to give each accelerate
  process its own shards. Inside a dataloader worker, ``datasets`` gives each worker its own shards. Images are read
  with ``Image(decode=False)``: a corrupt image would otherwise kill the datasets iterator and the rest of its shard.
- Shuffling is a *block shuffle* per worker: read ``shuffle_buffer`` raw (undecoded) rows, permute them with a seed
  derived from (seed, epoch, rank, worker, block), emit them. ``datasets``' own shuffle buffer is not saved by its
  ``state_dict`` (it is refilled on resume), so it cannot resume exactly; the block shuffle can: its state is the
  datasets state at the block start plus the position inside the block, and resuming re-reads at most one block of
  raw bytes. Shard (file) order is also permuted per epoch, identically on every process.
- Decoding, augmentation and tokenisation run in the workers; each worker emits *whole batches* made of valid
  samples only, so every process gets full, equal-size batches (the contrastive all-gather needs equal shapes).
- Corrupt samples are skipped and counted by kind (see ``imaging.SKIP_KINDS``); counts ride along with the batches to the
  main process (``TrainLoader.skipped``).
- Position state is torchdata's ``StatefulDataLoader`` (it snapshots each worker's ``state_dict`` with every batch
  and restarts the worker round-robin where it stopped), plus the per-worker state defined here.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..imaging import ImageDecodeError, decode_caption, load_image
from ..log import get_logger
from ..processing import CONTEXT_LENGTH, clean_text, crop_height

logger = get_logger(__name__)

_ROW_FEATURES = None  # built lazily (datasets import is slow)
# Local data files read by a ``datasets`` packaged builder of the same name, by extension.
FILE_KINDS = {"parquet": ".parquet", "webdataset": ".tar"}


def _row_features():
    global _ROW_FEATURES
    if _ROW_FEATURES is None:
        from datasets import Features, Value
        from datasets import Image as HFImage

        # Captions travel as bytes so that a non-UTF-8 caption reaches the worker (and is counted) instead of
        # failing inside Arrow; parquet string columns cast to binary without copying.
        _ROW_FEATURES = Features({"image": HFImage(decode=False), "caption": Value("binary")})
    return _ROW_FEATURES


class DataError(ValueError):
    """A data source that cannot be used (missing, empty, wrong columns); raised before any training."""


@dataclasses.dataclass
class SourceSpec:
    """One training data source.

    ``path``: a Hub dataset id, a local dataset folder (README.md YAML ``configs:``), parquet file(s)/folder/glob,
    webdataset tar file(s)/folder/glob (the RS5M release layout ``KEY.img_content``, ``KEY.img_name``,
    ``KEY.caption``, or ``KEY.jpg``/``KEY.txt``), or a CSV file (columns ``file,caption``) whose images live in
    ``images`` (default: the CSV's folder).
    ``weight``: sampling weight when mixing (all sources need one, or none: then they are concatenated).
    """

    path: str
    config: str | None = None
    split: str = "train"
    weight: float | None = None
    images: str | None = None
    kind: str = "auto"  # auto | hub | parquet | webdataset | csv

    @classmethod
    def from_any(cls, value: str | dict | SourceSpec) -> SourceSpec:
        if isinstance(value, SourceSpec):
            return value
        if isinstance(value, str):
            return cls(path=value)
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise DataError(f"unknown data source key(s) {sorted(unknown)} in {value}")
            return cls(**value)
        raise DataError(f"a data source must be a path or a mapping, got {value!r}")

    def resolved_kind(self) -> str:
        if self.kind != "auto":
            if self.kind not in (*FILE_KINDS, "hub", "csv"):
                raise DataError(f"data source {self.path}: unknown kind {self.kind!r} "
                                "(hub, parquet, webdataset or csv)")
            return self.kind
        lower = self.path.lower()
        if lower.endswith((".csv", ".tsv")):
            return "csv"
        if lower.endswith(".tar"):
            return "webdataset"
        if lower.endswith(".parquet") or "*" in self.path:
            return "parquet"
        p = Path(self.path)
        if p.is_dir() and not (p / "README.md").exists():
            for kind, extension in FILE_KINDS.items():
                if any(p.rglob(f"*{extension}")):
                    return kind
        return "hub"  # a Hub id or a local dataset folder with a dataset card


# ---------------------------------------------------------------------------------------------- sources
@dataclasses.dataclass
class _ResolvedSource:
    spec: SourceSpec
    kind: str  # "files" (a datasets packaged builder over data files) or "csv"
    builder: str = "parquet"
    files: list[str] = dataclasses.field(default_factory=list)
    rows: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)  # csv: (image path, caption bytes)
    num_rows: int | None = None


def _parquet_rows(files: Sequence[str]) -> int | None:
    try:
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(f).num_rows for f in files)
    except Exception:  # remote file, not parquet: unknown until read
        return None


def _resolve_files(spec: SourceSpec) -> _ResolvedSource:
    """Find a source's data files (without reading them) through ``datasets``' own data-file resolution."""
    from datasets import load_dataset_builder

    kind = spec.resolved_kind()
    try:
        if kind in FILE_KINDS:
            p = Path(spec.path)
            pattern = str(p / "**" / f"*{FILE_KINDS[kind]}") if p.is_dir() else spec.path
            builder = load_dataset_builder(kind, data_files={spec.split: pattern})
        else:
            builder = load_dataset_builder(spec.path, spec.config)
    except FileNotFoundError as err:
        raise DataError(f"data source {spec.path}: not found ({err})") from err
    except Exception as err:  # datasets raises many types for a bad repo/config; name the source in one line
        raise DataError(f"data source {spec.path} (config {spec.config}): {type(err).__name__}: {err}") from err
    data_files = builder.config.data_files or {}
    if spec.split not in data_files:
        raise DataError(f"data source {spec.path}: no split {spec.split!r} (found {sorted(data_files)})")
    files = [str(f) for f in data_files[spec.split]]
    if not files:
        raise DataError(f"data source {spec.path}: split {spec.split!r} has no data files")
    num_rows = None
    splits = getattr(builder.info, "splits", None) or {}
    if spec.split in splits and splits[spec.split].num_examples:
        num_rows = splits[spec.split].num_examples
    elif builder.name == "parquet":
        num_rows = _parquet_rows(files)
    return _ResolvedSource(spec=spec, kind="files", builder=builder.name, files=files, num_rows=num_rows)


def resolve_source(spec: SourceSpec) -> _ResolvedSource:
    """One resolver for every source kind (CSV + folder, parquet/webdataset files, Hub ids, release tars)."""
    return _resolve_csv(spec) if spec.resolved_kind() == "csv" else _resolve_files(spec)


def _resolve_csv(spec: SourceSpec) -> _ResolvedSource:
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"caption CSV {path} does not exist")
    images = Path(spec.images) if spec.images else path.parent
    if not images.is_dir():
        raise DataError(f"image folder {images} (for {path}) does not exist")
    # surrogateescape keeps undecodable caption bytes intact; they are re-encoded below and counted as
    # ``caption_not_utf8`` by the worker instead of aborting the whole file here.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    missing = {"file", "caption"} - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"caption CSV {path}: missing column(s) {sorted(missing)} (have {reader.fieldnames})")
    rows = [
        (str(images / row["file"]), (row["caption"] or "").encode("utf-8", errors="surrogateescape"))
        for row in reader
    ]
    return _ResolvedSource(spec=spec, kind="csv", rows=rows, num_rows=len(rows))


def _standard_columns(ds, where: str):
    """``image`` (undecoded) and ``caption`` (bytes) columns, from RS5M parquet or the release's webdataset tars.

    The release tars (``KEY.img_content``, ``KEY.img_name``, ``KEY.caption``; fields as ``data.sources`` reads
    them for the builder) stream as bytes columns of those names; the image becomes ``image`` with the original
    image name (else the sample key) as its path, the caption stays bytes so that the worker counts a non-UTF-8
    one as ``caption_not_utf8`` instead of the stream failing.
    """
    from datasets import Image as HFImage
    from datasets import Value

    from ..data.sources import release_fields  # (imports datasets: kept out of this module's import)

    columns = list(ds.column_names or [])
    if {"image", "caption"} <= set(columns):
        return ds.select_columns(["image", "caption"]).cast(_row_features())
    image, caption, name = release_fields(columns)
    if image is None or caption is None:
        missing = sorted({"image", "caption"} - set(columns))
        raise DataError(f"data source {where}: missing column(s) {missing} (have {columns}; webdataset tars need "
                        "KEY.img_content or KEY.jpg and KEY.caption or KEY.txt members)")
    # Cast first: a ``.jpg`` column is typed as a decoded Image, and map() would decode (and die on) every image.
    ds = ds.cast_column(image, HFImage(decode=False)).cast_column(caption, Value("binary"))
    key = name or ("__key__" if "__key__" in columns else None)
    return ds.map(_release_row, fn_kwargs={"image": image, "caption": caption, "key": key},
                  remove_columns=columns, features=_row_features())


def _check_columns(source: _ResolvedSource) -> None:
    """Open the first data file once, so that unusable columns stop the run here rather than in a worker."""
    from datasets import load_dataset

    split = source.spec.split
    ds = load_dataset(source.builder, data_files={split: source.files[:1]}, split=split, streaming=True)
    _standard_columns(ds, source.spec.path)


def _release_row(row: dict, image: str, caption: str, key: str | None) -> dict:
    name = row[key] if key else None
    if isinstance(name, bytes):
        name = name.decode("utf-8", errors="replace").strip()
    return {"image": {"bytes": row[image]["bytes"], "path": name or None}, "caption": row[caption]}


def _csv_rows(rows: list[list[tuple[str, bytes]]]) -> Iterator[dict]:
    for chunk in rows:
        for path, caption in chunk:
            yield {"image": {"path": path, "bytes": None}, "caption": caption}


def _chunks(items: list, n: int) -> list[list]:
    size = max(1, math.ceil(len(items) / n))
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------------------------- decoding
def decode_pair(
    image: dict | bytes | str | None,
    caption: bytes | str | None,
    max_image_pixels: int | None,
    draft_size: int | None = None,
) -> tuple[Image.Image | None, str | None, str | None]:
    """Decode one raw row; returns (RGB image, caption, None) or (None, None, skip kind).

    ``draft_size``: JPEGs larger than twice this on both sides are decoded at a reduced scale (libjpeg's DCT
    scaling, ``Image.draft``) that still keeps both sides >= ``draft_size``; the resize to the model size
    that follows hardly changes, and a 1920 px scene decodes several times faster.
    """
    caption, kind = decode_caption(caption)
    if kind is not None:
        return None, None, kind
    data, path = (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (image, None)
    if isinstance(data, str):
        data, path = None, data
    try:
        img = load_image(data if data is not None else (path or ""), max_pixels=max_image_pixels,
                         draft_size=draft_size)
    except ImageDecodeError as err:
        return None, None, err.kind
    return img, clean_text(caption), None


# ---------------------------------------------------------------------------------------------- dataset
class StreamingPairs(torch.utils.data.IterableDataset):
    """Batches of (pixel_values, input_ids, attention_mask) for one process; see the module docstring.

    Each item is a dict with ``pixel_values`` (B, 3, H, W), ``input_ids`` / ``attention_mask`` (B, L), ``skipped``
    (kind -> count of samples this worker dropped since its previous item) and ``worker``. The last item of each
    worker in an epoch may hold no batch (``pixel_values`` is None): it only carries the remaining skip counts.
    """

    def __init__(
        self,
        sources: Sequence[_ResolvedSource],
        *,
        tokenizer: Any,
        image_transform: Callable[[Image.Image], torch.Tensor],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        stopping_strategy: str = "first_exhausted",
        max_image_pixels: int | None = Image.MAX_IMAGE_PIXELS,
        csv_shards: int = 64,
        draft_size: int | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        weights = [s.spec.weight for s in sources]
        if any(w is not None for w in weights) and not all(w is not None and w > 0 for w in weights):
            raise DataError(f"mixing weights must be given for every source and be > 0, got {weights}")
        self.sources = list(sources)
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.stopping_strategy = stopping_strategy
        self.max_image_pixels = max_image_pixels
        self.draft_size = draft_size
        self.csv_shards = csv_shards
        self.epoch = 0
        self._state: dict[str, Any] | None = None  # the live per-worker position
        self._resume: dict[str, Any] | None = None

    # -- sizes
    @property
    def num_rows(self) -> int | None:
        """Rows (pairs) in all sources together, when known without reading the data."""
        counts = [s.num_rows for s in self.sources]
        return None if any(c is None for c in counts) else sum(counts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- state (called by StatefulDataLoader inside the worker)
    def state_dict(self) -> dict[str, Any]:
        return dict(self._state) if self._state is not None else {"epoch": self.epoch, "fresh": True}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = None if state.get("fresh") else dict(state)

    # -- the per-epoch datasets pipeline
    def _epoch_dataset(self, epoch: int):
        from datasets import IterableDataset, concatenate_datasets, interleave_datasets, load_dataset
        from datasets.distributed import split_dataset_by_node

        rng = np.random.default_rng([self.seed, epoch, 7])  # same on every process: shard order per epoch
        parts = []
        for source in self.sources:
            if source.kind == "csv":
                chunks = _chunks(source.rows, self.csv_shards)
                chunks = [chunks[i] for i in rng.permutation(len(chunks))]
                ds = IterableDataset.from_generator(
                    _csv_rows, gen_kwargs={"rows": chunks}, features=_row_features()
                )
            else:
                files = [source.files[i] for i in rng.permutation(len(source.files))]
                ds = load_dataset(
                    source.builder, data_files={source.spec.split: files}, split=source.spec.split, streaming=True
                )
                ds = _standard_columns(ds, source.spec.path)
            parts.append(ds)
        if len(parts) == 1:
            ds = parts[0]
        elif self.sources[0].spec.weight is None:
            ds = concatenate_datasets(parts)
        else:
            total = sum(s.spec.weight for s in self.sources)
            ds = interleave_datasets(
                parts,
                probabilities=[s.spec.weight / total for s in self.sources],
                seed=self.seed + epoch,
                stopping_strategy=self.stopping_strategy,
            )
        if self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        return ds

    def _collate(self, images: list[torch.Tensor], captions: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(captions, padding=True, truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt")
        return {
            "pixel_values": torch.stack(images),
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        resume = self._resume if self._resume and self._resume.get("epoch") == self.epoch else None
        self._resume = None
        epoch = self.epoch
        ds = self._epoch_dataset(epoch)
        if resume and resume.get("hf_state") is not None:
            ds.load_state_dict(resume["hf_state"])
        block_idx = resume["block"] if resume else 0
        skip_in_block = resume["pos"] if resume else 0
        rows = iter(ds)
        hf_state = resume.get("hf_state") if resume else None
        images: list[torch.Tensor] = []
        captions: list[str] = []
        skipped: Counter = Counter()
        exhausted = False
        while not exhausted:
            block = []
            for _ in range(self.shuffle_buffer):
                try:
                    block.append(next(rows))
                except StopIteration:
                    exhausted = True
                    break
            order = np.random.default_rng([self.seed, epoch, self.rank, worker, block_idx]).permutation(len(block))
            for pos in range(skip_in_block, len(block)):
                row = block[order[pos]]
                img, caption, kind = decode_pair(row["image"], row["caption"], self.max_image_pixels, self.draft_size)
                if kind is not None:
                    skipped[kind] += 1
                else:
                    # Augmentation randomness depends only on the sample's place in the stream, so a resumed
                    # run draws the same crops/flips/rotations. Only the CPU generator is seeded: torch.manual_seed
                    # also seeds every CUDA device, which costs ~1 ms per sample.
                    torch.random.default_generator.manual_seed(hash((self.seed, epoch, self.rank, worker, block_idx, pos)) & 0x7FFFFFFF)
                    images.append(self.image_transform(img))
                    captions.append(caption)
                if len(images) == self.batch_size:
                    batch = self._collate(images, captions)
                    images, captions = [], []
                    self._state = {"epoch": epoch, "hf_state": hf_state, "block": block_idx, "pos": pos + 1}
                    yield {**batch, "skipped": dict(skipped), "worker": worker}
                    skipped = Counter()
            skip_in_block = 0
            block_idx += 1
            hf_state = ds.state_dict()  # position after this block: where the next block starts
        # Remaining samples (< batch_size) are dropped; hand over the skip counts gathered since the last batch.
        self._state = {"epoch": epoch, "hf_state": hf_state, "block": block_idx, "pos": 0, "done": True}
        yield {"pixel_values": None, "skipped": dict(skipped), "worker": worker}


def build_train_dataset(
    sources: Sequence[str | dict | SourceSpec],
    *,
    processor: Any,
    batch_size: int,
    image_transform: Callable[[Image.Image], torch.Tensor] | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    stopping_strategy: str = "first_exhausted",
    max_image_pixels: int | None = Image.MAX_IMAGE_PIXELS,
) -> StreamingPairs:
    """Resolve ``sources`` (fails early with ``DataError`` if one is missing or empty) and build the dataset.

    ``processor``: a GeoRSCLIPProcessor/CLIPProcessor (its tokenizer is used; its image processor too unless
    ``image_transform`` is given). ``batch_size`` is per process.
    """
    specs = [SourceSpec.from_any(s) for s in sources]
    if not specs:
        raise DataError("no training data sources given")
    resolved = [resolve_source(s) for s in specs]
    for source in resolved:
        if source.num_rows == 0:
            raise DataError(f"data source {source.spec.path} (split {source.spec.split}) is empty")
        if source.kind == "files":
            _check_columns(source)
    if image_transform is None:
        image_processor = processor.image_processor

        def image_transform(img: Image.Image) -> torch.Tensor:
            return image_processor(img, return_tensors="pt")["pixel_values"][0]

    tokenizer = getattr(processor, "tokenizer", processor)
    sizing = getattr(processor, "image_processor", None)
    draft_size = crop_height(sizing) if getattr(sizing, "crop_size", None) else None
    return StreamingPairs(
        resolved,
        tokenizer=tokenizer,
        image_transform=image_transform,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        stopping_strategy=stopping_strategy,
        max_image_pixels=max_image_pixels,
        draft_size=draft_size,
    )


def source_rows(source: str | dict | SourceSpec) -> Iterator[dict]:
    """The raw rows (``image`` undecoded, ``caption`` bytes) of one source in a fixed order: for validation sets."""
    resolved = resolve_source(SourceSpec.from_any(source))
    stream = StreamingPairs([resolved], tokenizer=None, image_transform=None, batch_size=1, shuffle_buffer=1)
    return iter(stream._epoch_dataset(0))


# ---------------------------------------------------------------------------------------------- loader
class TrainLoader:
    """A ``StatefulDataLoader`` over ``StreamingPairs`` that yields only real batches and tallies skips.

    ``state_dict()`` is JSON-serialisable: the torchdata loader state (every worker's position and the worker
    round-robin) plus the skip counts so far. Load it, after ``set_epoch(saved_epoch)``, to resume exactly.
    """

    def __init__(self, dataset: StreamingPairs, num_workers: int = 2, prefetch_factor: int = 2):
        from torchdata.stateful_dataloader import StatefulDataLoader

        self.dataset = dataset
        self.skipped: Counter = Counter()
        kwargs = {"prefetch_factor": prefetch_factor, "persistent_workers": False} if num_workers > 0 else {}
        self.loader = StatefulDataLoader(
            dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity, **kwargs
        )

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for item in self.loader:
            for kind, count in item["skipped"].items():
                self.skipped[kind] += count
            if item["pixel_values"] is not None:
                yield {k: item[k] for k in ("pixel_values", "input_ids", "attention_mask")}

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict(), "skipped": dict(self.skipped), "epoch": self.dataset.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.set_epoch(state["epoch"])
        self.skipped = Counter(state.get("skipped", {}))
        self.loader.load_state_dict(state["loader"])


def _identity(item):
    return item
