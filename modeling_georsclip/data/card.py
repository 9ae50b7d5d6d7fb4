"""The RS5M dataset card (YAML ``configs:`` that make ``load_dataset(OUT, name)`` work) and Hub upload.

``datasets`` 4+ runs no loading scripts: the card's YAML alone tells it which parquet files form which
config and split. ``write_dataset_card(OUT)`` lists every config/split that has shards in ``OUT`` (plus a
``default`` config with all of them), the typed features, and fills the statistics table from the build
reports. ``push_dataset`` uploads the folder (``HfApi.upload_large_folder`` where the installed
huggingface_hub has it, ``upload_folder`` otherwise) and, as a dry run, lists what would be uploaded.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from ..hub import push_folder, upload_plan
from ..io import write_text_atomic
from ..log import get_logger
from ..resources import card_template
from .filters import REPORT_COLUMNS
from .shards import CONFIGS, DEFAULT_CONFIG, FEATURES, PUB11_SOURCES, RS3_SOURCES, shard_glob

logger = get_logger(__name__)

# Never uploaded: resume state and temp/hidden files of an unfinished write.
UPLOAD_IGNORE = [".build/**", ".build", "**/.*.tmp-*", ".*.tmp-*"]
SPLIT_ORDER = ("train", "validation", "test")


def _splits(out: Path) -> dict[str, dict[str, dict]]:
    """``{config: {split: report}}`` for every finished config/split with at least one shard."""
    found: dict[str, dict[str, dict]] = {}
    for path in sorted((out / "build_reports").glob("*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        if report.get("shards"):
            found.setdefault(report["config"], {})[report["split"]] = report
    order = {name: i for i, name in enumerate(CONFIGS)}
    return {
        config: dict(sorted(splits.items(), key=lambda kv: (SPLIT_ORDER + (kv[0],)).index(kv[0])))
        for config, splits in sorted(found.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))
    }


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if rows < limit:
            return name
    return "10M<n<100M"


def _num_bytes(out: Path, shards: list[str]) -> int:
    """Uncompressed size of the shards' row groups (what ``datasets`` calls a split's ``num_bytes``)."""
    import pyarrow.parquet as pq

    total = 0
    for rel in shards:
        meta = pq.ParquetFile(out / rel).metadata
        total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total


def card_data(out: str | os.PathLike) -> tuple[DatasetCardData, dict[str, dict[str, dict]]]:
    """Card metadata for the shards in ``out``: configs, typed features per config, split sizes."""
    out = Path(out)
    splits = _splits(out)
    if not splits:
        raise ValueError(f"{out} has no finished build with shards (build_reports/*.json); nothing to describe")
    features = FEATURES._to_yaml_list()
    configs, infos = [], []
    all_splits: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for config, by_split in splits.items():
        configs.append({
            "config_name": config,
            "data_files": [{"split": split, "path": shard_glob(config, split)} for split in by_split],
        })
        infos.append({
            "config_name": config,
            "features": copy.deepcopy(features),
            "splits": [
                {"name": split, "num_bytes": _num_bytes(out, r["shards"]), "num_examples": r["rows"]}
                for split, r in by_split.items()
            ],
        })
        for split, report in by_split.items():
            all_splits.setdefault(split, []).append(shard_glob(config, split))
            totals[split] = totals.get(split, 0) + report["rows"]
            sizes[split] = sizes.get(split, 0) + _num_bytes(out, report["shards"])
    if DEFAULT_CONFIG not in splits:
        configs.append({
            "config_name": DEFAULT_CONFIG,
            "default": True,
            "data_files": [{"split": split, "path": paths} for split, paths in all_splits.items()],
        })
        infos.append({
            "config_name": DEFAULT_CONFIG,
            "features": copy.deepcopy(features),
            "splits": [
                {"name": split, "num_bytes": sizes[split], "num_examples": n} for split, n in totals.items()
            ],
        })
    data = DatasetCardData(
        language=["en"],
        license="other",
        pretty_name="RS5M",
        size_categories=[_size_category(sum(totals.values()))],
        task_categories=["zero-shot-image-classification", "image-to-text", "text-to-image"],
        tags=["remote-sensing", "earth-observation", "satellite-imagery", "clip", "image-text"],
        configs=configs,
        dataset_info=infos,
    )
    return data, splits


def render_dataset_card(out: str | os.PathLike, template_path: str | os.PathLike | None = None) -> DatasetCard:
    """The card for ``out``: metadata from ``card_data``, text from the Jinja template."""
    data, splits = card_data(out)
    statistics = []
    for config, by_split in splits.items():
        for split, report in by_split.items():
            counts = report["counts"]
            statistics.append({
                "config": config,
                "split": split,
                "pairs": [counts.get(name, 0) for name in REPORT_COLUMNS],
                "images": counts.get("images_remaining", 0),
                "shards": len(report["shards"]),
                "invalid": counts.get("invalid_by_kind", {}),
                "duplicates": counts.get("duplicates_by_kind", {}),
                "filters": report.get("filters", []),
            })
    return DatasetCard.from_template(
        data,
        template_path=str(template_path or card_template("dataset_card.md")),
        columns=REPORT_COLUMNS,
        statistics=statistics,
        configs=list(splits),
        pub11_sources=PUB11_SOURCES,
        rs3_sources=RS3_SOURCES,
    )


def write_dataset_card(out: str | os.PathLike, template_path: str | os.PathLike | None = None) -> Path:
    """Render and write ``out/README.md`` atomically."""
    path = Path(out) / "README.md"
    write_text_atomic(path, str(render_dataset_card(out, template_path)))
    return path


def push_dataset(
    folder: str | os.PathLike, repo_id: str, *, dry_run: bool = False, private: bool = False
) -> list[tuple[str, int]]:
    """Upload ``folder`` as the Hub dataset ``repo_id`` (resume state excluded); returns the file plan.

    With ``dry_run`` nothing is contacted. Network or token problems raise ``hub.PushError`` naming the repo.
    """
    plan = upload_plan(folder, UPLOAD_IGNORE)
    if not any(path == "README.md" for path, _ in plan):
        raise ValueError(f"{folder} has no README.md dataset card; build the dataset first")
    return push_folder(
        folder, repo_id, repo_type="dataset", dry_run=dry_run, private=private, ignore_patterns=UPLOAD_IGNORE,
        commit_message="Upload RS5M shards and dataset card", large_folder=True,
    )
