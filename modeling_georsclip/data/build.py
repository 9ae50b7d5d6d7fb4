"""Build RS5M-style parquet shards with the paper's curation steps; resumable, deterministic, parallel.

    python -m modeling_georsclip.data.build --captions captions.csv --images images/ --output rs5m \\
        --config pub11 --split train --shard-size 10000 --workers 8 --filters keyword,invalid,dedup

Inputs: ``--captions CSV --images DIR``, ``--rs5m-tars GLOB`` (release tars), or ``--image-folder DIR``
with ``--labels CSV`` or ``--captioner MODEL``. Output: ``OUT/data/{config}/{split}-NNNNN.parquet``,
``OUT/build_reports/{config}-{split}.json`` and the dataset card ``OUT/README.md``; then
``datasets.load_dataset(OUT, config, split=split)`` works, streaming or not.

Order is the input order; decoding, validation and hashing run in ``--workers`` processes (results are
consumed in order, so the output does not depend on the worker count). A killed build rerun with the same
arguments resumes from its last recorded shard and produces the same shards as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from ..imaging import ImageDecodeError, decode_caption, load_image, read_bytes
from ..io import json_digest, write_text_atomic
from ..log import get_logger
from .filters import (
    PERCEPTUAL_HASHES,
    CurationReport,
    DuplicateFilter,
    FilterSettings,
    OutlierFilter,
    content_hash,
    keyword_filter,
)
from .geometa import GEO_COLUMNS, parse_geo_metadata
from .shards import BuildProgress, check_name
from .sources import Item, PipelineCaptioner, csv_items, folder_items, tar_items

logger = get_logger(__name__)

# Images the outlier scorer sees at once; shards close only between scoring batches (so a shard may exceed
# --shard-size by up to this many images' captions) to keep a resumed build's batches identical.
OUTLIER_BATCH = 32
THUMBNAIL_SIDE = 448


@dataclass
class Prepared:
    """What a worker learned about one item (no decoded pixels cross processes, only a thumbnail)."""

    index: int
    key: str
    pairs_in: int
    after_keyword: int = 0
    invalid: dict[str, int] = field(default_factory=dict)  # pairs removed, by kind
    rows: list[dict] = field(default_factory=list)  # pairs kept so far (geo-metadata filled), no image
    image_bytes: bytes = b""
    digest: bytes = b""
    perceptual: int | None = None
    thumbnail: Image.Image | None = None


def prepare(item: Item, settings: FilterSettings) -> Prepared:
    """Keyword filter, caption validation, full image decode, hashes: everything per-image and stateless."""
    result = Prepared(index=item.index, key=item.key, pairs_in=len(item.captions))
    captions = item.captions
    if settings.on("keyword"):
        captions = [c for c in captions if keyword_filter([c["caption"]], settings.keywords)]
    result.after_keyword = len(captions)
    if not captions:
        return result
    valid = []
    for caption in captions:
        text, kind = decode_caption(caption["caption"])
        if kind is None:
            valid.append({**caption, "caption": text})
        else:
            result.invalid[kind] = result.invalid.get(kind, 0) + 1
    if not valid:
        return result
    try:
        data = read_bytes(item.image)
        image = load_image(data)  # pixel limit Image.MAX_IMAGE_PIXELS, errors carry one of DECODE_KINDS
    except ImageDecodeError as err:
        result.invalid[err.kind] = result.invalid.get(err.kind, 0) + len(valid)
        return result
    result.image_bytes = data
    result.digest = content_hash(data)
    if settings.on("dedup") and settings.near_threshold is not None:
        result.perceptual = PERCEPTUAL_HASHES[settings.perceptual_hash](image)
    if settings.on("outlier"):
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        result.thumbnail = image
    for caption in valid:
        row = {"caption": caption["caption"].strip(), "source": caption["source"], "key": item.key}
        parsed = parse_geo_metadata(row["caption"])
        for name in GEO_COLUMNS:
            row[name] = caption[name] if caption.get(name) is not None else parsed[name]
        result.rows.append(row)
    return result


@dataclass
class BuildResult:
    out: Path
    config: str
    split: str
    report: CurationReport
    shards: list[str]
    rows: int


def _file_identity(path: str | os.PathLike) -> dict:
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def build(
    items_factory: Callable[[int], Iterable[Item]],
    out: str | os.PathLike,
    *,
    config: str,
    split: str,
    shard_size: int,
    settings: FilterSettings | None = None,
    outlier: OutlierFilter | None = None,
    workers: int = 1,
    input_description: dict | None = None,
    overwrite: bool = False,
    write_card: bool = True,
    _stop_after_shards: int | None = None,
) -> BuildResult:
    """Run the curation pipeline over ``items_factory(start)`` and write shards into ``out``.

    ``items_factory(start)`` must yield the same items in the same order on every call, from index
    ``start`` on. ``_stop_after_shards`` raises after that many recorded steps (tests: a killed build).
    """
    settings = settings or FilterSettings()
    check_name("config", config)
    check_name("split", split)
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    if settings.on("outlier") and outlier is None:
        raise ValueError("the outlier filter needs a scorer: pass --outlier-model DIR")
    out = Path(out)
    description = {
        "inputs": input_description or {},
        "shard_size": shard_size,
        "settings": asdict(settings),
        "outlier_threshold": outlier.threshold if outlier else None,
    }
    precision = getattr(outlier.scorer, "precision", "fp32") if outlier else None
    if precision not in (None, "fp32"):  # fp32 builds keep the fingerprints they had before precisions existed
        description["outlier_precision"] = precision
    progress = BuildProgress.open(out, config, split, json_digest(description), overwrite=overwrite)
    dedup = DuplicateFilter(settings.near_threshold if settings.on("dedup") else None)
    for digest, perceptual in progress.remembered():
        dedup.remember(digest, perceptual)

    if not progress.done:
        _run(progress, items_factory, settings, dedup, outlier, workers, shard_size, _stop_after_shards)
        progress.finish()
    report = CurationReport()
    for record in progress.records:
        report.add(record.counts)
    rows = sum(r.rows for r in progress.records)
    report_path = out / "build_reports" / f"{config}-{split}.json"
    write_text_atomic(
        report_path,
        json.dumps(
            {
                "config": config,
                "split": split,
                "counts": report.to_dict(),
                "shards": progress.shard_files,
                "rows": rows,
                "filters": list(settings.enabled),
                "near_duplicate_threshold": settings.near_threshold,
                "perceptual_hash": settings.perceptual_hash,
                "outlier_threshold": outlier.threshold if outlier else None,
                "outlier_precision": precision,
            },
            indent=1,
        ),
    )
    logger.info("%s/%s: %d rows in %d shards; report %s", config, split, rows, len(progress.shard_files), report_path)
    if write_card:
        from .card import write_dataset_card

        write_dataset_card(out)
    return BuildResult(out, config, split, report, progress.shard_files, rows)


def _exit_with(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Pool initializer: end this worker when the build process ``parent_pid`` dies, even by SIGKILL.

    ProcessPoolExecutor workers block on a queue whose pipe they hold open themselves, so a killed build
    would leave them alive for good (seen: two ~500 MB workers 30 minutes after a SIGKILL). Linux gets the
    kernel's PR_SET_PDEATHSIG; every platform also gets a daemon thread that polls the parent pid.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1  # <linux/prctl.h>
        try:
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc symbol (static builds): the watchdog below still runs
            pass
    if os.getppid() != parent_pid:  # the build died before the line above ran
        os._exit(1)
    import threading

    def watchdog() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:  # reparented: the build is gone
                os._exit(1)

    threading.Thread(target=watchdog, name="georsclip-parent-watchdog", daemon=True).start()


def _prepared_stream(items: Iterable[Item], settings: FilterSettings, workers: int) -> Iterator[Prepared]:
    worker = functools.partial(prepare, settings=settings)  # picklable for the process pool
    if workers <= 1:
        yield from map(worker, items)
        return
    # fork keeps the build process the workers' parent, which both guards in _exit_with rely on
    context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_exit_with,
                             initargs=(os.getpid(),)) as pool:
        # map() keeps input order; chunks amortise pickling. It submits eagerly, so feed it in windows.
        window: list[Item] = []
        for item in items:
            window.append(item)
            if len(window) >= 64 * workers:
                yield from pool.map(worker, window, chunksize=8)
                window = []
        if window:
            yield from pool.map(worker, window, chunksize=8)


def _run(progress, items_factory, settings, dedup, outlier, workers, shard_size, stop_after) -> None:
    from tqdm.auto import tqdm

    step = CurationReport()
    rows: list[dict] = []
    images = 0
    remembered: list[tuple[bytes, int | None]] = []
    pending: list[Prepared] = []
    cursor = progress.cursor
    commits = 0

    def emit(prepared: Prepared) -> None:
        nonlocal images
        image = {"bytes": prepared.image_bytes, "path": prepared.key}
        for row in prepared.rows:
            rows.append({"image": image, **row})
        step.remaining += len(prepared.rows)
        step.images_remaining += 1
        images += 1

    def score_pending() -> None:
        keep = outlier.keep([p.thumbnail for p in pending])
        for prepared, kept in zip(pending, keep, strict=True):
            if kept:
                emit(prepared)
            else:
                step.outliers_removed += len(prepared.rows)
        pending.clear()

    def commit(at: int) -> None:
        nonlocal step, rows, images, remembered, commits
        progress.commit(rows, cursor=at, images=images, counts=step.to_dict(), remembered=remembered)
        step, rows, images, remembered = CurationReport(), [], 0, []
        commits += 1
        if stop_after is not None and commits >= stop_after:
            raise RuntimeError(f"build stopped after {commits} shard(s) (simulated interruption)")

    stream = _prepared_stream(items_factory(cursor), settings, workers)
    bar = tqdm(stream, desc=f"{progress.config}/{progress.split}", unit="img", initial=cursor, disable=None)
    for prepared in bar:
        step.images_input += 1
        step.input += prepared.pairs_in
        step.after_keyword_filter += prepared.after_keyword
        for kind, pairs in prepared.invalid.items():
            step.invalid_removed += pairs
            step.count("invalid_by_kind", kind, pairs)
        if prepared.rows:
            duplicate = dedup.check(prepared.digest, prepared.perceptual) if settings.on("dedup") else None
            if duplicate:
                step.duplicates_removed += len(prepared.rows)
                step.count("duplicates_by_kind", duplicate, len(prepared.rows))
            else:
                if settings.on("dedup"):
                    remembered.append((prepared.digest, prepared.perceptual))
                if settings.on("outlier"):
                    pending.append(prepared)
                    if len(pending) >= OUTLIER_BATCH:
                        score_pending()
                else:
                    emit(prepared)
        cursor = prepared.index + 1
        if not pending and len(rows) >= shard_size:
            commit(cursor)
    if pending:
        score_pending()
    if rows or step.images_input:
        commit(cursor)


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_georsclip.data.build", description=__doc__.split("\n\n")[0]
    )
    inputs = parser.add_argument_group("inputs (one of)")
    inputs.add_argument("--captions", help="CSV with columns file,caption[,source,latitude,...]")
    inputs.add_argument("--images", help="image folder the CSV's 'file' column is relative to")
    inputs.add_argument("--rs5m-tars", help="glob of RS5M release tars (img_content/img_name/caption)")
    inputs.add_argument("--image-folder", help="label-only image folder")
    inputs.add_argument("--labels", help="CSV file,label[,source] for --image-folder")
    inputs.add_argument("--captioner", help="image-text-to-text model captioning --image-folder images")
    inputs.add_argument("--caption-template", default="{label}", help="caption from a label, e.g. 'a satellite image of {label}.'")
    parser.add_argument("--output", required=True, help="dataset folder (created; shards, card, reports)")
    parser.add_argument("--config", required=True, help="config name, e.g. pub11 or rs3")
    parser.add_argument("--split", required=True, help="split name, e.g. train or validation")
    parser.add_argument("--shard-size", type=int, default=10_000, help="rows per shard (an image is never split)")
    parser.add_argument("--source", help="source name for rows without one (default: the config name)")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding and validating images")
    parser.add_argument("--filters", default="invalid", help="comma list of keyword,invalid,dedup,outlier ('invalid' always runs)")
    parser.add_argument("--near-dup-threshold", type=int, default=6, help="perceptual-hash bits; -1 turns near-dup off")
    parser.add_argument("--perceptual-hash", choices=sorted(PERCEPTUAL_HASHES), default="phash")
    parser.add_argument("--outlier-model", help="local folder (or Hub id) of a GeoRSCLIP/CLIP checkpoint")
    parser.add_argument("--outlier-threshold", type=float, default=0.5, help="keep images with P(RS) >= this")
    from ..inference import add_precision_argument  # torch loads only for commands that parse (not workers)

    add_precision_argument(parser, "fp32")  # the outlier scorer's inference precision
    parser.add_argument("--overwrite", action="store_true", help="discard an earlier build of this config/split")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the dataset folder to this Hub dataset repo")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list the files, upload nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    source = args.source or args.config
    chosen = [bool(args.captions or args.images), bool(args.rs5m_tars), bool(args.image_folder)]
    if sum(chosen) != 1:
        raise SystemExit("error: give exactly one input: --captions/--images, --rs5m-tars or --image-folder")
    if chosen[0] and not (args.captions and args.images):
        raise SystemExit("error: --captions and --images go together")
    filters = set(args.filters.split(",")) | {"invalid"} if args.filters.strip() else {"invalid"}
    settings = FilterSettings(
        enabled=tuple(filters),
        near_threshold=None if args.near_dup_threshold < 0 else args.near_dup_threshold,
        perceptual_hash=args.perceptual_hash,
        outlier_threshold=args.outlier_threshold,
    )
    outlier = None
    if settings.on("outlier"):
        if not args.outlier_model:
            raise SystemExit("error: --filters outlier needs --outlier-model DIR")
        from ..inference import ModelLoadError, PrecisionError
        from .filters import OutlierScorer

        try:
            scorer = OutlierScorer(args.outlier_model, precision=args.precision)
        except (ModelLoadError, PrecisionError) as err:
            print(f"error: --outlier-model: {err}", file=sys.stderr)
            return 2
        outlier = OutlierFilter(scorer, threshold=args.outlier_threshold)

    if chosen[0]:
        description = {"captions": _file_identity(args.captions), "images": str(Path(args.images).resolve())}

        def factory(start: int):
            return csv_items(args.captions, args.images, source, start=start)
    elif chosen[1]:
        import glob

        description = {"tars": [_file_identity(p) for p in sorted(glob.glob(args.rs5m_tars))]}

        def factory(start: int):
            return tar_items(args.rs5m_tars, source, start=start)
    else:
        captioner = PipelineCaptioner(args.captioner) if args.captioner else None
        description = {
            "folder": str(Path(args.image_folder).resolve()),
            "labels": _file_identity(args.labels) if args.labels else None,
            "captioner": args.captioner,
            "template": args.caption_template,
        }

        def factory(start: int):
            return folder_items(
                args.image_folder, source, args.labels, captioner, args.caption_template, start=start
            )

    try:
        result = build(
            factory,
            args.output,
            config=args.config,
            split=args.split,
            shard_size=args.shard_size,
            settings=settings,
            outlier=outlier,
            workers=args.workers,
            input_description=description,
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"rows": result.rows, "shards": len(result.shards), **result.report.to_dict()}, indent=1))
    if args.push_to_hub:
        from ..hub import PushError
        from .card import push_dataset

        try:
            plan = push_dataset(args.output, args.push_to_hub, dry_run=args.dry_run)
        except PushError as err:  # the dataset is saved; only the upload failed
            print(f"error: {err}", file=sys.stderr)
            return 3
        if args.dry_run:
            for path, size in plan:
                print(f"{size:>12}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


