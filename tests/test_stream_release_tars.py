"""Training straight from the RS5M release: webdataset tars with ``img_content``, ``img_name``, ``caption``."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_georsclip.processing import GeoRSCLIPProcessor
from modeling_georsclip.training.augment import transform_for_processor
from modeling_georsclip.training.stream import (
    DataError,
    SourceSpec,
    TrainLoader,
    _resolve_files,
    build_train_dataset,
)

PROCESSOR = GeoRSCLIPProcessor.default(image_size=32)
BAD_CAPTION = b"caf\xe9 latin-1 caption"  # not UTF-8


def jpeg(n: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(n).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_release(root: Path, shards: int, per_shard: int, bad_caption: set[int] = frozenset()) -> Path:
    """Tars in the release layout: ``{shard}{i}.img_content`` (JPEG), ``.img_name``, ``.caption`` per sample."""
    root.mkdir(parents=True)
    n = 0
    for shard in range(shards):
        with tarfile.open(root / f"rs5m-{shard:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}"
                add(tar, f"{key}.img_content", jpeg(n))
                add(tar, f"{key}.img_name", f"laion2b_{n}.jpg".encode())
                add(tar, f"{key}.caption", BAD_CAPTION if n in bad_caption else f"sample {n}".encode())
                n += 1
    return root


def captions(batches) -> list[str]:
    decode = PROCESSOR.tokenizer.batch_decode
    return [t.replace(" ", "") for b in batches for t in decode(b["input_ids"], skip_special_tokens=True)]


def test_release_tars_are_a_source_with_bad_captions_skipped_and_counted(tmp_path):
    root = write_release(tmp_path / "rs5m", shards=2, per_shard=5, bad_caption={3})
    for path in (str(root), str(root / "rs5m-*.tar"), str(root / "rs5m-00000.tar")):
        assert SourceSpec(path).resolved_kind() == "webdataset"
    ds = build_train_dataset([str(root)], processor=PROCESSOR, batch_size=1, shuffle_buffer=4)
    assert ds.num_rows is None  # not counted without reading the tars: the trainer then asks for max_steps
    loader = TrainLoader(ds, num_workers=2)
    got = captions(loader)
    assert loader.skipped == Counter({"caption_not_utf8": 1})
    assert sorted(got) == sorted(f"sample{i}" for i in range(10) if i != 3)

    # The rows before the worker: image bytes keyed by the original image name, caption bytes as stored.
    rows = list(ds._epoch_dataset(0))
    by_name = {row["image"]["path"]: row for row in rows}
    assert set(by_name) == {f"laion2b_{i}.jpg" for i in range(10)}
    assert by_name["laion2b_7.jpg"]["image"]["bytes"] == jpeg(7)
    assert by_name["laion2b_3.jpg"]["caption"] == BAD_CAPTION


def test_release_tars_resume_exactly_mid_stream(tmp_path):
    root = write_release(tmp_path / "rs5m", shards=4, per_shard=9)

    def make():
        ds = build_train_dataset([str(root / "*.tar")], processor=PROCESSOR, batch_size=3, shuffle_buffer=5,
                                 seed=3, image_transform=transform_for_processor(PROCESSOR, augment=True))
        return TrainLoader(ds, num_workers=2)

    full = list(make())
    assert len(full) == 12  # 2 workers x 2 tars x 9 rows, batches of 3
    loader = make()
    it = iter(loader)
    head = [next(it) for _ in range(5)]  # worker 0: 3 batches = 9 rows: block 1, position 4 of 5
    state = json.loads(json.dumps(loader.state_dict()))  # the checkpoint format
    del it
    position = state["loader"]["_snapshot"]["_worker_snapshots"]["worker_0"]["dataset_state"]
    assert (position["block"], position["pos"]) == (1, 4) and position["hf_state"] is not None
    resumed = make()
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert len(head) + len(tail) == len(full)
    for a, b in zip(head + tail, full, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_tars_without_image_or_caption_members_are_refused_naming_them(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    with tarfile.open(root / "a.tar", "w") as tar:
        add(tar, "0001.img_content", jpeg(1))
        add(tar, "0001.json", b"{}")
    with pytest.raises(DataError, match=r"odd: missing column\(s\) \['caption', 'image'\].*KEY.img_content"):
        build_train_dataset([str(root)], processor=PROCESSOR, batch_size=1)  # before any worker starts
    assert _resolve_files(SourceSpec(str(root))).builder == "webdataset"


@pytest.mark.slow
def test_train_cli_runs_on_release_tars(tmp_path):
    """``georsclip-train`` straight on release tars (training and validation data), saving a plain CLIP."""
    from transformers import CLIPModel

    from modeling_georsclip.train import main

    root = write_release(tmp_path / "rs5m", shards=2, per_shard=8, bad_caption={5})
    out = tmp_path / "run"
    code = main(["--config", "tiny_cpu", "--data", f"[{root}]", "--val_data", str(root / "rs5m-00001.tar"),
                 "--max_steps", "3", "--batch_size", "4", "--num_workers", "0", "--report_to", "none",
                 "--checkpoint_every", "0", "--output_dir", str(out)])
    assert code == 0
    summary = json.loads((out / "final" / "train_results.json").read_text())
    assert summary["steps"] == 3 and summary["skipped_samples"] == {"caption_not_utf8": 1}
    assert summary["final_validation"]["mR"] >= 0
    CLIPModel.from_pretrained(out / "final")


def test_img2dataset_tars_in_a_dataset_folder_resolve_like_a_hub_repo(tmp_path):
    """A dataset folder with a card and tars goes through ``load_dataset_builder`` like a Hub id; .jpg/.txt work."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text("# RS5M tars\n")
    with tarfile.open(root / "part-0.tar", "w") as tar:
        for i in range(4):
            add(tar, f"{i:04d}.jpg", jpeg(i))
            add(tar, f"{i:04d}.txt", f"sample {i}".encode())
    assert SourceSpec(str(root)).resolved_kind() == "hub"
    ds = build_train_dataset([str(root)], processor=PROCESSOR, batch_size=2, shuffle_buffer=2)
    assert ds.sources[0].builder == "webdataset"
    rows = list(ds._epoch_dataset(0))
    assert [row["image"]["path"] for row in rows] == ["0000", "0001", "0002", "0003"]  # the sample keys
    assert sorted(captions(TrainLoader(ds, num_workers=0))) == [f"sample{i}" for i in range(4)]
