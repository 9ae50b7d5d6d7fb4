"""Data throughput: the RS5M builder's images/s against the decode limit measured in the same run.

    PYTHONPATH=. python benchmarks/data_throughput.py --copies 8 --workers 1 2

The decode limit is PIL decode + RGB conversion + resize (shortest side 224) of the same images in a tight
single-process loop: no builder can be faster per process. The builder additionally reads files, validates,
hashes (SHA-256, and pHash with ``--filters invalid,dedup``), parses geo-metadata and writes parquet.
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

from PIL import Image

from modeling_georsclip.data.build import build
from modeling_georsclip.data.filters import FilterSettings
from modeling_georsclip.data.sources import csv_items
from modeling_georsclip.imaging import load_image

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "rs-samples"


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


def decode_limit(paths: list[Path], size: int = 224) -> float:
    """Images/s of PIL decode + RGB + resize (shortest side ``size``) in a tight loop."""
    start = time.perf_counter()
    for path in paths:
        image = load_image(path)
        scale = size / min(image.size)
        image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                     Image.Resampling.BICUBIC)
    return len(paths) / (time.perf_counter() - start)


def builder_throughput(captions: Path, images: Path, out: Path, workers: int, filters: str) -> float:
    start = time.perf_counter()
    result = build(lambda s: csv_items(captions, images, "bench", start=s), out, config="pub11", split="train",
                   shard_size=32,  # several shards, so that each loader worker gets its own
                   settings=FilterSettings(enabled=tuple(filters.split(","))), workers=workers,
                   write_card=False)
    elapsed = time.perf_counter() - start
    return result.report.images_input / elapsed  # every input image is read, decoded and validated


# --------------------------------------------------------------------------- loader hook
def loader_throughput(dataset_dir: Path, workers: int) -> float:
    """Images/s of the training loader (``data.loader``) streaming the dataset the builder just wrote."""
    from loader_throughput import time_train_loader

    from modeling_georsclip.processing import GeoRSCLIPProcessor

    images, seconds = time_train_loader([str(dataset_dir)], GeoRSCLIPProcessor.default(image_size=224), workers,
                                        batch_size=32)
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
        decode_limit(paths[: len(paths) // 4])  # warm the page cache and PIL plugins
        limit = decode_limit(paths)
        print(f"{len(paths)} images; decode+resize limit (1 process): {limit:.1f} images/s")
        for workers in args.workers:
            rate = builder_throughput(captions, images, tmp / f"out{workers}", workers, args.filters)
            print(f"builder workers={workers} filters={args.filters}: {rate:.1f} images/s "
                  f"= {rate / limit:.2f} x decode limit ({rate / limit / workers:.2f} per worker)")
            loader = loader_throughput(tmp / f"out{workers}", workers)
            print(f"loader workers={workers}: {loader:.1f} images/s = {loader / limit:.2f} x decode limit "
                  f"({loader / limit / workers:.2f} per worker)")


if __name__ == "__main__":
    main()
