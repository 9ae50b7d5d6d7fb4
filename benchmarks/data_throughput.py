"""Data throughput: the RS5M builder's images/s against the decode limit measured in the same run.

    PYTHONPATH=. python benchmarks/data_throughput.py --copies 8 --workers 1 2

The decode limit (``decode_limit.py``, shared with loader_throughput.py) is Pillow decode + RGB conversion +
resize (shortest side 224) of the same images in a tight single-process loop: no builder can be faster per
process. The builder decodes at full resolution (it validates every pixel); the training loader drafts large
JPEGs to the model input size, so its line is compared with the limit under the same draft. The builder also
reads files, validates, hashes (SHA-256, and pHash with ``--filters invalid,dedup``), parses geo-metadata and
writes parquet.
Images are the vendored RS samples (sizes 224 px to 1920x1080), copied ``--copies`` times.

The training loader's images/s over the same built dataset are measured by ``loader_throughput``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

from decode_limit import decode_limit, loader_draft_size

from modeling_georsclip.data.build import build
from modeling_georsclip.data.filters import FilterSettings
from modeling_georsclip.data.sources import csv_items
from modeling_georsclip.processing import GeoRSCLIPProcessor
from modeling_georsclip.resources import samples_dir

SAMPLES = samples_dir()


def make_inputs(folder: Path, copies: int) -> tuple[Path, Path, list[Path]]:
    images = folder / "images"
    images.mkdir(parents=True)
    paths = []
    for i in range(copies):
        for source in sorted((SAMPLES / "images").iterdir()):
            target = images / f"{i:03d}_{source.name}"
            shutil.copyfile(source, target)
            paths.append(target)
    captions = folder / "captions.csv"
    with open(captions, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption", "source"])
        for path in paths:
            writer.writerow([path.name, f"a satellite image {path.stem}", "bench"])
    return captions, images, paths


def builder_throughput(captions: Path, images: Path, out: Path, workers: int, filters: str) -> float:
    start = time.perf_counter()
    result = build(lambda s: csv_items(captions, images, "bench", start=s), out, config="pub11", split="train",
                   shard_size=32,  # several shards, so that each loader worker gets its own
                   settings=FilterSettings(enabled=tuple(filters.split(","))), workers=workers,
                   write_card=False)
    elapsed = time.perf_counter() - start
    return result.report.images_input / elapsed  # every input image is read, decoded and validated


# --------------------------------------------------------------------------- loader hook
def loader_throughput(dataset_dir: Path, workers: int, processor) -> float:
    """Images/s of the training loader (``training.stream``) streaming the dataset the builder just wrote."""
    from loader_throughput import time_train_loader

    images, seconds = time_train_loader([str(dataset_dir)], processor, workers, batch_size=32)
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=12, help="copies of the vendored images")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--filters", default="invalid", help="builder filters, e.g. invalid,dedup")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        captions, images, paths = make_inputs(tmp / "in", args.copies)
        encoded = [p.read_bytes() for p in paths]
        limit = decode_limit(encoded)
        processor = GeoRSCLIPProcessor.default(image_size=224)
        drafted = decode_limit(encoded, draft_size=loader_draft_size(processor))
        print(f"{len(paths)} images; decode+resize limit (1 process): {limit:.1f} images/s full decode, "
              f"{drafted:.1f} images/s with the loader's JPEG draft")
        for workers in args.workers:
            rate = builder_throughput(captions, images, tmp / f"out{workers}", workers, args.filters)
            print(f"builder workers={workers} filters={args.filters}: {rate:.1f} images/s "
                  f"= {rate / limit:.2f} x decode limit ({rate / limit / workers:.2f} per worker)")
            loader = loader_throughput(tmp / f"out{workers}", workers, processor)
            print(f"loader workers={workers}: {loader:.1f} images/s = {loader / drafted:.2f} x drafted decode limit "
                  f"({loader / drafted / workers:.2f} per worker)")


if __name__ == "__main__":
    main()
