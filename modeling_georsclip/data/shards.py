"""The RS5M shard format (parquet, typed with ``datasets.Features``) and the resumable shard writer.

Layout under a dataset folder ``OUT``::

    OUT/README.md                              dataset card; its YAML ``configs:`` is all load_dataset needs
    OUT/data/{config}/{split}-{NNNNN}.parquet  one row per (image, caption) pair
    OUT/build_reports/{config}-{split}.json    curation counts of a finished build
    OUT/.build/{config}/{split}/               resume state (progress.json + dedup state per shard)

Each shard is written to a temporary file and renamed into place; only then is it recorded in
``progress.json`` (itself replaced atomically). A killed build therefore leaves either a recorded shard
or nothing/an unrecorded orphan, which a resumed build removes and writes again identically.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_file, write_text_atomic
from ..log import get_logger
from .geometa import GEO_COLUMNS

logger = get_logger(__name__)

CONFIGS: tuple[str, ...] = ("pub11", "rs3")
DEFAULT_CONFIG = "default"
PUB11_SOURCES: tuple[str, ...] = (
    "LAION2B", "COYO700M", "LAIONCOCO", "LAION400M", "WIT", "YFCC15M", "CC12M", "Redcaps", "CC3M", "SBU", "VG",
)
RS3_SOURCES: tuple[str, ...] = ("FMoW", "BigEarthNet", "MillionAID")

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "source": datasets.Value("string"),
        "key": datasets.Value("string"),
        "latitude": datasets.Value("float64"),
        "longitude": datasets.Value("float64"),
        "utm_zone": datasets.Value("string"),
        "gsd": datasets.Value("float32"),
        "date": datasets.Value("string"),
        "cloud_cover": datasets.Value("float32"),
        "off_nadir": datasets.Value("float32"),
    }
)
COLUMNS: tuple[str, ...] = tuple(FEATURES)
assert set(GEO_COLUMNS) <= set(COLUMNS)

# Small row groups keep memory bounded when a reader streams image bytes (and suit the Hub viewer).
ROW_GROUP_SIZE = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(kind: str, value: str) -> str:
    """Config and split names become folder/file names: letters, digits, ``_ . -`` only."""
    if not _NAME.match(value) or ".." in value:
        raise ValueError(f"invalid {kind} name {value!r}: use letters, digits, '_', '.', '-'")
    return value


def shard_relpath(config: str, split: str, index: int) -> str:
    """``data/{config}/{split}-{index:05d}.parquet`` (POSIX, relative to the dataset folder)."""
    return f"data/{config}/{split}-{index:05d}.parquet"


def shard_glob(config: str, split: str) -> str:
    return f"data/{config}/{split}-*.parquet"


def write_shard(rows: list[dict], path: str | os.PathLike) -> None:
    """Write ``rows`` (dicts with every column; ``image`` as ``{"bytes", "path"}``) as one parquet shard.

    The schema carries the ``datasets`` feature metadata, so ``load_dataset`` restores the types.
    """
    table = pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema)
    with atomic_file(path, "wb") as handle:
        pq.write_table(table, handle, row_group_size=ROW_GROUP_SIZE, compression="zstd")
    os.chmod(path, 0o644)


@dataclass
class ShardRecord:
    """One step of a build: the input images up to ``cursor`` were consumed; ``file`` holds their rows."""

    index: int
    cursor: int
    rows: int
    images: int
    file: str | None
    counts: dict = field(default_factory=dict)


class BuildProgress:
    """``OUT/.build/{config}/{split}/progress.json`` plus one dedup-state file per record.

    ``fingerprint`` identifies the build settings: resuming with different settings is refused.
    """

    VERSION = 1

    def __init__(self, out: str | os.PathLike, config: str, split: str, fingerprint: str):
        self.out = Path(out)
        self.config, self.split, self.fingerprint = config, split, fingerprint
        self.folder = self.out / ".build" / config / split
        self.path = self.folder / "progress.json"
        self.records: list[ShardRecord] = []
        self.done = False

    # -- persistence -------------------------------------------------------------------------------
    @classmethod
    def open(cls, out, config: str, split: str, fingerprint: str, overwrite: bool = False) -> BuildProgress:
        """Load the progress of an earlier (possibly killed) build, or start a new one."""
        progress = cls(out, config, split, fingerprint)
        if overwrite:
            progress.reset()
            return progress
        if progress.path.exists():
            try:
                data = json.loads(progress.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"cannot read build progress {progress.path}: {err}") from err
            if data.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"{out} holds a build of {config}/{split} made with other inputs or settings "
                    f"({progress.path}); rerun with the same arguments to resume, or pass --overwrite"
                )
            progress.records = [ShardRecord(**r) for r in data["records"]]
            progress.done = bool(data.get("done"))
        else:
            progress.reset()
        progress.remove_orphans()
        return progress

    def reset(self) -> None:
        """Forget earlier progress and delete this config/split's shards."""
        for path in (self.out / "data" / self.config).glob(f"{self.split}-*.parquet"):
            path.unlink()
        if self.folder.exists():
            for path in self.folder.iterdir():
                path.unlink()
        report = self.out / "build_reports" / f"{self.config}-{self.split}.json"
        if report.exists():
            report.unlink()
        self.records, self.done = [], False

    def remove_orphans(self) -> None:
        """Delete shards and temp files not recorded in progress (left by a killed build)."""
        recorded = {r.file for r in self.records if r.file}
        folder = self.out / "data" / self.config
        if folder.exists():
            for path in folder.iterdir():
                rel = f"data/{self.config}/{path.name}"
                is_ours = path.name.startswith(f"{self.split}-") or path.name.startswith(f".{self.split}-")
                if is_ours and rel not in recorded:
                    logger.info("removing unrecorded file %s from an interrupted build", path)
                    path.unlink()
        if self.folder.exists():
            keep = {self.path.name} | {self._state_name(r.index) for r in self.records}
            for path in self.folder.iterdir():
                if path.name not in keep:
                    path.unlink()

    def _save(self) -> None:
        data = {
            "version": self.VERSION,
            "config": self.config,
            "split": self.split,
            "fingerprint": self.fingerprint,
            "done": self.done,
            "records": [r.__dict__ for r in self.records],
        }
        write_text_atomic(self.path, json.dumps(data, indent=1))

    @staticmethod
    def _state_name(index: int) -> str:
        return f"dedup-{index:05d}.npz"

    # -- state ---------------------------------------------------------------------------------------
    @property
    def cursor(self) -> int:
        return self.records[-1].cursor if self.records else 0

    @property
    def next_shard(self) -> int:
        return sum(1 for r in self.records if r.file)

    def commit(
        self,
        rows: list[dict],
        *,
        cursor: int,
        images: int,
        counts: dict,
        remembered: list[tuple[bytes, int | None]],
    ) -> ShardRecord:
        """Write a shard of ``rows`` (if any) and record the step; dedup state first, shard, then progress."""
        index = len(self.records)
        self.folder.mkdir(parents=True, exist_ok=True)
        digests = np.frombuffer(b"".join(d for d, _ in remembered), dtype=np.uint8).reshape(-1, 32)
        perceptual = np.array([p if p is not None else 0 for _, p in remembered], dtype=np.uint64)
        has_perceptual = np.array([p is not None for _, p in remembered], dtype=bool)
        with atomic_file(self.folder / self._state_name(index), "wb") as handle:
            np.savez(handle, digests=digests, perceptual=perceptual, has_perceptual=has_perceptual)
        relpath = None
        if rows:
            relpath = shard_relpath(self.config, self.split, self.next_shard)
            write_shard(rows, self.out / relpath)
        record = ShardRecord(index=index, cursor=cursor, rows=len(rows), images=images, file=relpath, counts=counts)
        self.records.append(record)
        self._save()
        return record

    def remembered(self):
        """Yield every ``(digest, perceptual or None)`` a dedup filter had remembered at the cursor."""
        for record in self.records:
            with np.load(self.folder / self._state_name(record.index)) as state:
                for digest, value, has in zip(
                    state["digests"], state["perceptual"], state["has_perceptual"], strict=True
                ):
                    yield bytes(digest), int(value) if has else None

    def finish(self) -> None:
        self.done = True
        self._save()

    @property
    def shard_files(self) -> list[str]:
        return [r.file for r in self.records if r.file]
