"""Streaming loader: process/worker sharding, corrupt-sample skipping by kind, exact state save/restore."""

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Value
from datasets import Image as HFImage
from PIL import Image

from modeling_georsclip.processing import GeoRSCLIPProcessor
from modeling_georsclip.training.stream import DataError, TrainLoader, build_train_dataset

PROCESSOR = GeoRSCLIPProcessor.default(image_size=32)
FEATURES = Features({"image": HFImage(), "caption": Value("string"), "source": Value("string"),
                     "key": Value("string")})


def encode(n: int, fmt: str = "JPEG", size: int = 24) -> bytes:
    rng = np.random.default_rng(n)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def write_dataset(root: Path, shards: int, per_shard: int, corrupt: dict[int, tuple] | None = None) -> Path:
    """RS5M-format folder: data/default/train-NNNNN.parquet + README.md with YAML configs."""
    corrupt = corrupt or {}
    n = 0
    (root / "data/default").mkdir(parents=True)
    for s in range(shards):
        rows = {"image": [], "caption": [], "source": [], "key": []}
        for _ in range(per_shard):
            image, caption = corrupt.get(n, (encode(n), f"sample {n}"))
            rows["image"].append({"bytes": image, "path": None})
            rows["caption"].append(caption)
            rows["source"].append("test")
            rows["key"].append(str(n))
            n += 1
        Dataset.from_dict(rows, features=FEATURES).to_parquet(str(root / f"data/default/train-{s:05d}.parquet"))
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/default/train-*.parquet\n---\n")
    return root


def captions(batches) -> list[str]:
    """Decoded captions without spaces (the CLIP BPE splits digits: "sample 12" decodes as "sample 1 2")."""
    decode = PROCESSOR.tokenizer.batch_decode
    return [t.replace(" ", "") for b in batches for t in decode(b["input_ids"], skip_special_tokens=True)]


@pytest.mark.parametrize("shards", [8, 3])  # 8: whole shards per process; 3: datasets splits by example
def test_processes_and_workers_cover_everything_once(tmp_path, shards):
    root = write_dataset(tmp_path / "ds", shards=shards, per_shard=6)
    seen = []
    for rank in range(2):
        ds = build_train_dataset([str(root)], processor=PROCESSOR, batch_size=1, rank=rank, world_size=2,
                                 shuffle_buffer=4)
        seen.append(captions(TrainLoader(ds, num_workers=2)))
    expected = {f"sample{i}" for i in range(shards * 6)}
    assert not set(seen[0]) & set(seen[1])
    assert Counter(seen[0] + seen[1]) == Counter(expected)  # each exactly once
    assert len(seen[0]) > 0 and len(seen[1]) > 0


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    big = encode(0, "PNG", size=64)  # 4096 px > 2 x max_image_pixels below: a decompression bomb
    corrupt = {1: (encode(1)[:300], "truncated"), 4: (b"<html>404</html>", "html page"), 7: (b"", "zero bytes"),
               9: (encode(9), "   "), 12: (big, "bomb")}
    root = write_dataset(tmp_path / "ds", shards=2, per_shard=8, corrupt=corrupt)
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "ok.jpg").write_bytes(encode(100))
    (images / "bad.jpg").write_bytes(encode(101))
    csv = tmp_path / "pairs.csv"
    csv.write_bytes(b"file,caption\nok.jpg,sample 100\nbad.jpg,caf\xe9 latin-1\nmissing.jpg,sample 102\n")
    ds = build_train_dataset([str(root), {"path": str(csv), "images": str(images)}], processor=PROCESSOR,
                             batch_size=1, shuffle_buffer=4, max_image_pixels=1500)
    loader = TrainLoader(ds, num_workers=2)
    got = captions(loader)
    assert loader.skipped == Counter({"truncated": 1, "not_an_image": 1, "empty_file": 1, "empty_caption": 1,
                                      "decompression_bomb": 1, "caption_not_utf8": 1, "missing_file": 1})
    assert sorted(got) == sorted([f"sample{i}" for i in range(16) if i not in corrupt] + ["sample100"])


def test_state_restores_the_exact_stream(tmp_path):
    root = write_dataset(tmp_path / "ds", shards=4, per_shard=9)
    from modeling_georsclip.training.augment import transform_for_processor

    def make():
        ds = build_train_dataset([str(root)], processor=PROCESSOR, batch_size=3, shuffle_buffer=5, seed=3,
                                 image_transform=transform_for_processor(PROCESSOR, augment=True))
        return TrainLoader(ds, num_workers=2)

    full = list(make())
    loader = make()
    it = iter(loader)
    head = [next(it) for _ in range(4)]
    state = json.loads(json.dumps(loader.state_dict()))  # must survive JSON (checkpoint format)
    del it
    resumed = make()
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert len(head) + len(tail) == len(full) == 12  # 2 workers x 2 shards x 9 rows = 6 batches of 3 each
    for a, b in zip(head + tail, full, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["pixel_values"], b["pixel_values"])  # same augmentation draws too
    # a new epoch reshuffles
    loader.set_epoch(1)
    assert captions(list(loader)) != captions(full)


def test_missing_and_empty_sources_fail_early(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_train_dataset([str(tmp_path / "none.csv")], processor=PROCESSOR, batch_size=2)
    (tmp_path / "empty.csv").write_text("file,caption\n")
    with pytest.raises(DataError, match="is empty"):
        build_train_dataset([str(tmp_path / "empty.csv")], processor=PROCESSOR, batch_size=2)
    (tmp_path / "cols.csv").write_text("image,text\na.jpg,x\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['caption', 'file'\]"):
        build_train_dataset([str(tmp_path / "cols.csv")], processor=PROCESSOR, batch_size=2)
