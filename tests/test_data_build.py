"""The RS5M builder: load_dataset on its output, corrupt inputs, exact resume, release tars, image folders, push."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from modeling_georsclip.data.build import build, main
from modeling_georsclip.data.card import push_dataset, upload_plan
from modeling_georsclip.data.filters import FilterSettings
from modeling_georsclip.data.geometa import parse_geo_metadata
from modeling_georsclip.data.shards import FEATURES
from modeling_georsclip.data.sources import csv_items, folder_items, tar_items

from conftest import SAMPLES, TEST_DATA, subprocess_env


def noise_image(seed: int, size: int = 40, fmt: str = "PNG") -> bytes:
    """A distinct small image per seed (random blocks, so perceptual hashes differ)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def rs3_inputs(folder: Path, count: int = 12, offset: int = 0) -> tuple[Path, Path, list[dict]]:
    """An rs3_dump-like captions CSV (real RS3 captions) with generated stand-in images."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(TEST_DATA / "rs3_dump_2k.csv", newline="", encoding="utf-8") as handle:
        dump = [r for r in csv.DictReader(handle) if r["caption"].strip()][offset : offset + count]
    rows = []
    for i, row in enumerate(dump):
        name = row["name"].replace(".jpg", ".png")
        (images / name).write_bytes(noise_image(1000 + offset + i))
        source = "FMoW" if name.startswith("fmow") else "BigEarthNet" if name.startswith("ben") else "MillionAID"
        rows.append({"file": name, "caption": row["caption"], "source": source})
    captions = write_csv(folder / "captions.csv", ["file", "caption", "source"],
                         [[r["file"], r["caption"], r["source"]] for r in rows])
    return captions, images, rows


def csv_factory(captions: Path, images: Path, source: str = "test"):
    return lambda start: csv_items(captions, images, source, start=start)


def shard_rows(out: Path, config: str, split: str) -> list[dict]:
    rows = []
    for path in sorted((out / "data" / config).glob(f"{split}-*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[dict], list[dict], list[dict]]:
    """pub11/train from the vendored captions.csv; rs3/train and rs3/validation from rs3_dump captions."""
    out = tmp_path_factory.mktemp("rs5m")
    main(["--captions", str(SAMPLES / "captions.csv"), "--images", str(SAMPLES / "images"), "--output", str(out),
          "--config", "pub11", "--split", "train", "--shard-size", "8"])
    train_csv, train_images, rs3_train = rs3_inputs(tmp_path_factory.mktemp("rs3train"), 12, 0)
    valid_csv, valid_images, rs3_valid = rs3_inputs(tmp_path_factory.mktemp("rs3valid"), 5, 100)
    for captions, images, split in ((train_csv, train_images, "train"), (valid_csv, valid_images, "validation")):
        main(["--captions", str(captions), "--images", str(images), "--output", str(out), "--config", "rs3",
              "--split", split, "--shard-size", "5"])
    with open(SAMPLES / "captions.csv", newline="", encoding="utf-8") as handle:
        pub11 = list(csv.DictReader(handle))
    return out, pub11, rs3_train, rs3_valid


@pytest.mark.parametrize("streaming", [False, True])
def test_load_dataset_yields_typed_rows_with_right_counts(built, streaming):
    out, pub11, rs3_train, rs3_valid = built
    expected = {
        ("pub11", "train"): pub11,
        ("rs3", "train"): rs3_train,
        ("rs3", "validation"): rs3_valid,
        ("default", "train"): pub11 + rs3_train,
        ("default", "validation"): rs3_valid,
    }
    for (config, split), csv_rows in expected.items():
        ds = datasets.load_dataset(str(out), config, split=split, streaming=streaming)
        assert ds.features == FEATURES
        rows = list(ds)
        assert len(rows) == len(csv_rows), (config, split)
        got = sorted((r["key"], r["caption"], r["source"]) for r in rows)
        want = sorted((r["file"], r["caption"].strip(), r["source"]) for r in csv_rows)
        assert got == want
        assert all(isinstance(r["image"], Image.Image) and r["image"].size[0] > 0 for r in rows)
        del ds, rows


def test_build_keeps_csv_order_and_every_caption_of_an_image(built):
    out, pub11, _, _ = built
    rows = shard_rows(out, "pub11", "train")
    assert [(r["key"], r["caption"]) for r in rows] == [(r["file"], r["caption"].strip()) for r in pub11]
    # Shards close at image boundaries once they hold >= 8 rows: no image is split across shards.
    keys_per_shard = [
        {r["key"] for r in pq.read_table(p).to_pylist()} for p in sorted((out / "data/pub11").glob("*.parquet"))
    ]
    assert len(keys_per_shard) == 3
    for a, b in zip(keys_per_shard, keys_per_shard[1:], strict=False):
        assert not a & b
    stadium = [r for r in rows if r["key"] == "cliprsicd__stadium_1.jpg"]
    assert len(stadium) == 4 and len({id(r) for r in stadium}) == 4
    assert stadium[0]["image"]["bytes"] == (SAMPLES / "images/cliprsicd__stadium_1.jpg").read_bytes()


def test_geo_metadata_parsed_into_typed_columns(built):
    out, _, rs3_train, _ = built
    ds = datasets.load_dataset(str(out), "rs3", split="train")
    first = ds[0]  # fmow_stadium_211_3: "... ground sample distance stands at 2.60m ... utm zone 18T ...
    assert first["key"] == "fmow_stadium_211_3_msrgb.png"  # 15 o'clock, June 9, 2016. amidst 0% cloud cover
    assert first["utm_zone"] == "18T"  # ... off-nadir: 33.10?"
    assert first["gsd"] == pytest.approx(2.60)
    assert first["date"] == "2016-06-09T15:00"
    assert first["cloud_cover"] == pytest.approx(0.0)
    assert first["off_nadir"] == pytest.approx(33.10, abs=1e-4)
    assert first["latitude"] is None and first["longitude"] is None
    millionaid = [r for r in ds if r["key"].startswith("millionaid")]
    assert millionaid and all(r["gsd"] is None and r["utm_zone"] is None and r["date"] is None for r in millionaid)


def test_geo_metadata_parser_on_other_phrasings():
    text = ("during Fall in Balwyn, Australia, ... every pixel in this image corresponds to 1.31m on the ground. "
            "this capture, time-stamped at 0 o'clock, September 17, 2016, is referenced in utm zone 55H. "
            "... with a cloud cover rate of 9%. angles ... target azimuth of 268.33? and off-nadir angle of 12.55?.")
    assert parse_geo_metadata(text) == {
        "latitude": None, "longitude": None, "utm_zone": "55H", "gsd": 1.31, "date": "2016-09-17T00:00",
        "cloud_cover": 9.0, "off_nadir": 12.55,
    }
    assert parse_geo_metadata("other metadata worth noting are the utm zone: 35U, timestamp: 9 o'clock, "
                              "September 11, 2011")["utm_zone"] == "35U"
    assert set(parse_geo_metadata("a satellite view of a city").values()) == {None}


def test_dataset_card_yaml_and_statistics(built):
    out = built[0]
    text = (out / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---")[1])
    names = [c["config_name"] for c in meta["configs"]]
    assert names == ["pub11", "rs3", "default"]
    default = meta["configs"][2]
    assert default["default"] is True
    assert {d["split"]: d["path"] for d in default["data_files"]} == {
        "train": ["data/pub11/train-*.parquet", "data/rs3/train-*.parquet"],
        "validation": ["data/rs3/validation-*.parquet"],
    }
    assert "| pub11 | train | 25 | 25 | 0 | 0 | 0 | 25 | 6 | 3 |" in text
    report = json.loads((out / "build_reports/rs3-validation.json").read_text())
    assert report["counts"]["remaining"] == 5 and report["rows"] == 5


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    good = [noise_image(i, fmt="JPEG") for i in range(3)]
    for i, data in enumerate(good):
        (images / f"good{i}.jpg").write_bytes(data)
    (images / "truncated.jpg").write_bytes(good[0][: len(good[0]) // 2])
    (images / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    (images / "empty.jpg").write_bytes(b"")
    rows = [["good0.jpg", "satellite one"], ["truncated.jpg", "t1"], ["truncated.jpg", "t2"],
            ["good1.jpg", "satellite two"], ["garbage.jpg", "g"], ["empty.jpg", "e"], ["missing.jpg", "m"],
            ["good2.jpg", ""], ["good2.jpg", "satellite three"]]
    captions = write_csv(tmp_path / "c.csv", ["file", "caption"], rows)
    out = tmp_path / "out"
    result = build(csv_factory(captions, images), out, config="pub11", split="train", shard_size=100)
    counts = result.report
    assert counts.input == 9 and counts.images_input == 7
    assert counts.invalid_by_kind == {"truncated": 2, "not_an_image": 1, "empty_file": 1, "missing_file": 1,
                                      "empty_caption": 1}
    assert counts.invalid_removed == 6 and counts.remaining == 3
    ds = datasets.load_dataset(str(out), "pub11", split="train")
    assert sorted(ds["key"]) == ["good0.jpg", "good1.jpg", "good2.jpg"]
    assert all(image.size == (40, 40) for image in ds["image"])  # every stored image decodes


def _tables(out: Path, config: str, split: str) -> list[list[dict]]:
    return [pq.read_table(p).to_pylist() for p in sorted((out / "data" / config).glob(f"{split}-*.parquet"))]


def test_killed_build_resumes_exactly(tmp_path):
    captions, images, rows = rs3_inputs(tmp_path / "in", 14, 200)
    settings = FilterSettings(enabled=("invalid", "dedup"))
    reference = tmp_path / "reference"
    build(csv_factory(captions, images), reference, config="rs3", split="train", shard_size=3, settings=settings)
    resumed = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated interruption"):
        build(csv_factory(captions, images), resumed, config="rs3", split="train", shard_size=3,
              settings=settings, _stop_after_shards=2)
    assert len(list((resumed / "data/rs3").glob("*.parquet"))) == 2
    assert not (resumed / "README.md").exists()
    # Debris of a kill between writing a shard and recording it: an unrecorded shard and a temp file.
    (resumed / "data/rs3/train-00002.parquet").write_bytes(b"half")
    (resumed / "data/rs3/.train-00003.parquet.tmp-x").write_bytes(b"half")
    build(csv_factory(captions, images), resumed, config="rs3", split="train", shard_size=3, settings=settings)
    assert _tables(resumed, "rs3", "train") == _tables(reference, "rs3", "train")
    assert sorted(p.name for p in (resumed / "data/rs3").iterdir()) == sorted(
        p.name for p in (reference / "data/rs3").iterdir())
    keys = [r["key"] for table in _tables(resumed, "rs3", "train") for r in table]
    assert len(keys) == len(set(keys)) == len(rows)
    assert json.loads((resumed / "build_reports/rs3-train.json").read_text())["counts"] == json.loads(
        (reference / "build_reports/rs3-train.json").read_text())["counts"]


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, read from /proc (children first appear under their parent)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we listed
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_sigkilled_cli_build_resumes_exactly_and_leaves_no_worker(tmp_path):
    captions, images, rows = rs3_inputs(tmp_path / "in", 16, 300)
    args = ["--captions", str(captions), "--images", str(images), "--config", "rs3", "--split", "train",
            "--shard-size", "2", "--filters", "invalid,dedup", "--workers", "2"]
    reference = tmp_path / "reference"
    assert main(args + ["--output", str(reference)]) == 0
    killed = tmp_path / "killed"
    # A child whose two pool workers are slow (sleep per image after the 4th), so it can be killed mid-way.
    script = (
        "import sys, time\n"
        "import modeling_georsclip.data.build as b\n"
        "original = b.prepare\n"
        "def slow(item, settings):\n"
        "    if item.index >= 4: time.sleep(0.5)\n"
        "    return original(item, settings)\n"
        "b.prepare = slow\n"
        "sys.exit(b.main(sys.argv[1:]))\n"
    )
    env = subprocess_env()
    child = subprocess.Popen([sys.executable, "-c", script, *args, "--output", str(killed)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = killed / ".build/rs3/train/progress.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        if progress.exists() and len(json.loads(progress.read_text())["records"]) >= 2:
            break
        time.sleep(0.05)
    workers = _descendants(child.pid)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(workers) >= 2, "the build should have been running its two pool workers"
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:  # do not leave them behind for the next test either
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived the SIGKILLed build"
    recorded = len(json.loads(progress.read_text())["records"])
    assert 2 <= recorded < 8, "the child should have been killed mid-way"
    assert main(args + ["--output", str(killed)]) == 0
    assert _tables(killed, "rs3", "train") == _tables(reference, "rs3", "train")
    keys = [r["key"] for table in _tables(killed, "rs3", "train") for r in table]
    assert len(keys) == len(set(keys)) == len(rows)


def test_resume_with_other_settings_is_refused(tmp_path):
    captions, images, _ = rs3_inputs(tmp_path / "in", 4, 400)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        build(csv_factory(captions, images), out, config="rs3", split="train", shard_size=1, _stop_after_shards=1)
    with pytest.raises(ValueError, match="other inputs or settings"):
        build(csv_factory(captions, images), out, config="rs3", split="train", shard_size=2)
    result = build(csv_factory(captions, images), out, config="rs3", split="train", shard_size=2, overwrite=True)
    assert result.rows == 4 and len(result.shards) == 2


def test_two_workers_give_the_same_shards(tmp_path):
    captions, images, _ = rs3_inputs(tmp_path / "in", 10, 500)
    settings = FilterSettings(enabled=("invalid", "dedup"))
    build(csv_factory(captions, images), tmp_path / "one", config="rs3", split="train", shard_size=4,
          settings=settings, workers=1)
    build(csv_factory(captions, images), tmp_path / "two", config="rs3", split="train", shard_size=4,
          settings=settings, workers=2)
    assert _tables(tmp_path / "one", "rs3", "train") == _tables(tmp_path / "two", "rs3", "train")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_release_tars_are_rekeyed_and_loaded(tmp_path):
    for shard in range(2):
        with tarfile.open(tmp_path / f"rs5m-{shard:03d}.tar", "w") as tar:
            for i in range(3):
                key = f"{shard:03d}{i:05d}"
                _add(tar, f"{key}.img_content", noise_image(600 + shard * 10 + i, fmt="JPEG"))
                _add(tar, f"{key}.img_name", f"laion_{shard}_{i}.jpg".encode())
                _add(tar, f"{key}.caption", f"satellite view number {shard}-{i}".encode())
    out = tmp_path / "out"
    code = main(["--rs5m-tars", str(tmp_path / "rs5m-*.tar"), "--output", str(out), "--config", "pub11",
                 "--split", "train", "--shard-size", "4", "--source", "LAION2B"])
    assert code == 0
    ds = datasets.load_dataset(str(out), "pub11", split="train", streaming=True)
    rows = list(ds)
    assert [r["key"] for r in rows] == [f"laion_{s}_{i}.jpg" for s in range(2) for i in range(3)]
    assert {r["source"] for r in rows} == {"LAION2B"}
    assert rows[4]["caption"] == "satellite view number 1-1"


@pytest.mark.parametrize("member", ["../evil.caption", "/etc/evil.caption", "a/../../evil.caption"])
def test_release_tar_with_escaping_member_is_rejected(tmp_path, member, capsys):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "00000.img_content", noise_image(1))
        _add(tar, member, b"caption")
    with pytest.raises(ValueError, match="unsafe member"):
        list(tar_items(str(path), "x"))
    code = main(["--rs5m-tars", str(path), "--output", str(tmp_path / "out"), "--config", "pub11",
                 "--split", "train", "--shard-size", "4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.tar" in err and repr(member) in err
    assert not (tmp_path / "out" / "data").exists() or not any((tmp_path / "out" / "data").rglob("*.parquet"))


def test_release_tar_with_link_member_is_rejected(tmp_path):
    path = tmp_path / "link.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("00000.caption")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="is a link"):
        list(tar_items(str(path), "x"))


def test_image_folder_with_labels_and_with_a_captioner(tmp_path):
    labels = write_csv(tmp_path / "labels.csv", ["file", "label"],
                       [["remoteclip__airport.jpg", "airport"], ["cliprsicd__stadium_1.jpg", "stadium"]])
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("remoteclip__airport.jpg", "cliprsicd__stadium_1.jpg", "dsifn__A_0_2.png"):
        (folder / name).write_bytes((SAMPLES / "images" / name).read_bytes())
    out = tmp_path / "out"
    build(lambda start: folder_items(folder, "labels", labels, None, "a satellite image of {label}.", start),
          out, config="rs3", split="train", shard_size=10)
    rows = shard_rows(out, "rs3", "train")
    assert [(r["key"], r["caption"]) for r in rows] == [
        ("cliprsicd__stadium_1.jpg", "a satellite image of stadium."),
        ("remoteclip__airport.jpg", "a satellite image of airport."),
    ]  # the unlabeled image has no caption: counted invalid (empty caption), not written
    seen = []

    def captioner(image):
        seen.append(image.size)
        return f"an aerial image {image.size[0]}x{image.size[1]}"

    out2 = tmp_path / "out2"
    build(lambda start: folder_items(folder, "captioned", None, captioner, start=start),
          out2, config="rs3", split="train", shard_size=10)
    rows = shard_rows(out2, "rs3", "train")
    assert [(r["key"], r["caption"]) for r in rows] == [
        ("cliprsicd__stadium_1.jpg", "an aerial image 224x224"),
        ("dsifn__A_0_2.png", "an aerial image 256x256"),
        ("remoteclip__airport.jpg", "an aerial image 224x224"),
    ]
    assert len(seen) == 3


def test_push_dry_run_lists_files_without_resume_state(built, capsys, tmp_path):
    out = built[0]
    plan = push_dataset(out, "someone/rs5m", dry_run=True)
    paths = [p for p, _ in plan]
    assert "README.md" in paths and "data/pub11/train-00000.parquet" in paths
    assert "build_reports/pub11-train.json" in paths
    assert not any(p.startswith(".build") for p in paths)
    assert dict(plan)["README.md"] == (out / "README.md").stat().st_size
    assert len(upload_plan(out)) > len(plan)  # without the ignore list the resume state would go up
    captions, images, _ = rs3_inputs(tmp_path / "in", 2, 700)
    code = main(["--captions", str(captions), "--images", str(images), "--output", str(tmp_path / "o"),
                 "--config", "rs3", "--split", "train", "--shard-size", "5", "--push-to-hub", "me/x", "--dry-run"])
    assert code == 0
    assert "data/rs3/train-00000.parquet" in capsys.readouterr().out


def test_push_without_network_fails_with_one_clear_error(built, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="someone/rs5m"):
        push_dataset(built[0], "someone/rs5m")


def test_csv_file_outside_the_image_folder_is_rejected(tmp_path):
    (tmp_path / "images").mkdir()
    captions = write_csv(tmp_path / "c.csv", ["file", "caption"], [["../secret.jpg", "x"]])
    with pytest.raises(ValueError, match=r"c.csv: file '../secret.jpg' points outside"):
        list(csv_items(captions, tmp_path / "images", "s"))


def test_decompression_bombs_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    images = tmp_path / "images"
    images.mkdir()
    (images / "ok.png").write_bytes(noise_image(1, size=20))  # 400 px
    (images / "warn.png").write_bytes(noise_image(2, size=40))  # 1,600 px: Pillow only warns; we refuse
    (images / "bomb.png").write_bytes(noise_image(3, size=80))  # 6,400 px: DecompressionBombError
    captions = write_csv(tmp_path / "c.csv", ["file", "caption"],
                         [["ok.png", "a"], ["warn.png", "b"], ["bomb.png", "c"]])
    result = build(csv_factory(captions, images), tmp_path / "out", config="rs3", split="train", shard_size=5)
    assert result.report.invalid_by_kind == {"decompression_bomb": 2}
    assert [r["key"] for r in shard_rows(tmp_path / "out", "rs3", "train")] == ["ok.png"]


def test_non_utf8_caption_bytes_are_skipped_and_counted_not_fatal(tmp_path, capsys):
    """One latin-1 byte in a captions CSV used to abort the whole build (exit 2); now that caption is
    skipped and counted as ``caption_not_utf8``, the kind name the training stream uses as well."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        (images / f"img{i}.png").write_bytes(noise_image(700 + i))
    (tmp_path / "c.csv").write_bytes(b"file,caption,source\nimg0.png,caf\xe9 on a square,a\xe9b\n"
                                     b"img0.png,a stadium,x\nimg1.png,farmland,x\n")
    out = tmp_path / "out"
    code = main(["--captions", str(tmp_path / "c.csv"), "--images", str(images), "--output", str(out),
                 "--config", "rs3", "--split", "train"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["invalid_by_kind"] == {"caption_not_utf8": 1}
    rows = shard_rows(out, "rs3", "train")
    assert [(r["key"], r["caption"]) for r in rows] == [("img0.png", "a stadium"), ("img1.png", "farmland")]


def test_release_tar_caption_not_utf8_uses_the_shared_kind(tmp_path):
    with tarfile.open(tmp_path / "rs5m-000.tar", "w") as tar:
        for i, caption in enumerate([b"caf\xe9", b"   ", b"a harbour"]):
            _add(tar, f"{i:08d}.img_content", noise_image(800 + i, fmt="JPEG"))
            _add(tar, f"{i:08d}.caption", caption)
    result = build(lambda start: tar_items(str(tmp_path / "rs5m-*.tar"), "x", start=start), tmp_path / "out",
                   config="pub11", split="train", shard_size=5)
    assert result.report.invalid_by_kind == {"caption_not_utf8": 1, "empty_caption": 1}


def test_multiband_uint16_tiff_is_decoded_by_the_builder(tmp_path):
    """6-band uint16 GeoTIFFs (Pillow cannot open them) are valid images for the builder."""
    import rasterio

    images = tmp_path / "images"
    images.mkdir()
    data = np.random.default_rng(0).integers(0, 4000, size=(6, 32, 32), dtype=np.uint16)
    with rasterio.open(images / "s2.tif", "w", driver="GTiff", width=32, height=32, count=6,
                       dtype="uint16") as dst:
        dst.write(data)
    captions = write_csv(tmp_path / "c.csv", ["file", "caption"], [["s2.tif", "fields"]])
    result = build(csv_factory(captions, images), tmp_path / "out", config="rs3", split="train", shard_size=5)
    assert result.report.invalid_by_kind == {} and result.rows == 1
