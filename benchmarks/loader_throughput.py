"""Loader images/s per worker against the decode limit measured in the same run.

    PYTHONPATH=. python benchmarks/loader_throughput.py [--images DIR] [--workers 2]

``measure_loader_throughput(image_files, ...)`` is importable. The limit (``decode_limit.py``, shared with
data_throughput.py) is one process doing nothing but decode -- with the loader's own JPEG draft size -- to-RGB
and resize on the same encoded images; the loader runs its whole path (parquet streaming, block shuffle,
decode, to-RGB, processor or augmentation, tokenise, batch, worker -> main transfer). Goal (issue 3): loader
images/s per worker >= 0.8 x the limit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from decode_limit import decode_limit, loader_draft_size

from modeling_georsclip.data.sources import IMAGE_EXTENSIONS
from modeling_georsclip.resources import samples_dir


def _write_shards(encoded: list[bytes], folder: Path, shards: int) -> Path:
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    features = Features({"image": HFImage(), "caption": Value("string"), "source": Value("string"),
                         "key": Value("string")})
    (folder / "data/default").mkdir(parents=True)
    per = -(-len(encoded) // shards)
    for s in range(shards):
        part = encoded[s * per : (s + 1) * per]
        rows = {"image": [{"bytes": b, "path": None} for b in part],
                "caption": [f"a remote sensing image number {s * per + i}" for i in range(len(part))],
                "source": ["bench"] * len(part), "key": [str(s * per + i) for i in range(len(part))]}
        Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"data/default/train-{s:05d}.parquet"))
    return folder / "data/default"


def time_train_loader(
    sources: list[str], processor, workers: int, batch_size: int = 32, augment: bool = False
) -> tuple[int, float]:
    """(images, seconds) for one pass of the training loader over ``sources``; worker start-up excluded."""
    from modeling_georsclip.training.augment import transform_for_processor
    from modeling_georsclip.training.stream import TrainLoader, build_train_dataset

    dataset = build_train_dataset(sources, processor=processor, batch_size=batch_size, shuffle_buffer=256,
                                  image_transform=transform_for_processor(processor, augment))
    iterator = iter(TrainLoader(dataset, num_workers=workers))
    next(iterator)  # the first batch pays for worker start-up
    images, start = 0, time.perf_counter()
    for batch in iterator:
        images += batch["pixel_values"].shape[0]
    return images, time.perf_counter() - start


def measure_loader_throughput(
    image_files: list[str | Path], *, workers: int = 2, image_size: int = 224, repeat: int = 8,
    batch_size: int = 32, augment: bool = False, limit_seconds: float = 3.0,
) -> dict[str, float]:
    """Run the training loader over parquet shards of ``image_files`` (repeated) and the PIL limit; return figures."""
    from modeling_georsclip.processing import GeoRSCLIPProcessor

    encoded = [Path(f).read_bytes() for f in image_files] * repeat
    processor = GeoRSCLIPProcessor.default(image_size=image_size)
    limit = decode_limit(encoded, image_size, loader_draft_size(processor), limit_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        shards = _write_shards(encoded, Path(tmp), shards=max(2 * workers, 2))
        images, elapsed = time_train_loader([str(shards)], processor, workers, batch_size, augment)
    per_worker = images / elapsed / max(workers, 1)
    return {"decode_limit_img_s": limit, "loader_img_s": images / elapsed, "loader_img_s_per_worker": per_worker,
            "ratio_per_worker_vs_limit": per_worker / limit, "images": images, "workers": workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(samples_dir() / "images"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=16)
    parser.add_argument("--augment", action="store_true")
    args = parser.parse_args()
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    result = measure_loader_throughput(files, workers=args.workers, image_size=args.image_size, repeat=args.repeat,
                                       augment=args.augment)
    for key, value in result.items():
        print(f"{key:28s} {value:10.2f}" if isinstance(value, float) else f"{key:28s} {value:10d}")


if __name__ == "__main__":
    main()
