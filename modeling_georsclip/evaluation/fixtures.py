"""A small evaluation set built from the vendored real samples: ``make_eval_fixture(root)``.

Lays out ``root/zsc/rs-scenes`` (an image folder with 6 classes and one deliberately corrupt file),
``root/retrieval/rs-captions`` (Karpathy-style JSON: 6 test images with 25 real RSICD/RSITMD/RS5M
captions, plus one train image) and ``root/selo/AIR-SLT-mini`` (the DOTA demo scene from mmrotate with
four hand-drawn caption/polygon queries in AIR-SLT's anno.json format). Used by the tests and the demo
(``python evaluate.py --data-root root``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

from ..resources import samples_dir

SAMPLES = samples_dir()

# class folder -> vendored images (labels from file names or captions of their source, see SOURCES.md)
ZSC_CLASSES = {
    "Airport": ["remoteclip__airport.jpg"],
    "Harbor": ["sahi__boats.jpg"],
    "Parking_Lot": ["mmrotate__demo.jpg"],
    "Playground": ["retrievalsys__00013.jpg", "retrievalsys__00256.jpg", "retrievalsys__00455.jpg"],
    "Sparse_Residential": ["selo__sparseresidential_3814.tif"],
    "Stadium": ["cliprsicd__stadium_1.jpg"],
}
RETRIEVAL_TRAIN = {"rs5m__00001.jpg"}  # one image in the train split, to exercise split filtering

# Queries on mmrotate__dota_demo.jpg (1616 x 1565): polygons in pixels, drawn by hand on the image.
SELO_SCENE = "mmrotate__dota_demo.jpg"
SELO_QUERIES = [
    ("a large building with a flat brown roof next to a parking lot.",
     [[[490, 300], [1160, 300], [1160, 600], [490, 600]]]),
    ("many yellow school buses are parked in rows on the gray parking lot.",
     [[[180, 820], [1380, 820], [1380, 940], [180, 940]], [[190, 1020], [1280, 1020], [1280, 1180], [190, 1180]]]),
    ("cars are parked in a small parking lot next to the road.",
     [[[180, 280], [490, 280], [490, 600], [180, 600]]]),
    ("a white building with a gray roof at the bottom left.",
     [[[180, 1250], [430, 1250], [430, 1390], [180, 1390]]]),
]


def make_eval_fixture(root: str | os.PathLike, samples: str | os.PathLike = SAMPLES) -> dict[str, Path]:
    """Write the three mini datasets under ``root``; returns ``{"root", "zsc", "retrieval", "selo"}`` paths."""
    root, images = Path(root), Path(samples) / "images"
    if not images.is_dir():
        raise FileNotFoundError(f"vendored samples not found at {images}")
    zsc = root / "zsc" / "rs-scenes"
    for classname, files in ZSC_CLASSES.items():
        (zsc / classname).mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copyfile(images / name, zsc / classname / name)
    (zsc / "Stadium" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")

    retrieval = root / "retrieval" / "rs-captions"
    (retrieval / "images").mkdir(parents=True, exist_ok=True)
    captions: dict[str, list[str]] = defaultdict(list)
    with open(Path(samples) / "captions.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            captions[row["file"]].append(row["caption"])
    entries = []
    for number, (name, sentences) in enumerate(sorted(captions.items())):
        shutil.copyfile(images / name, retrieval / "images" / name)
        split = "train" if name in RETRIEVAL_TRAIN else "test"
        entries.append({"imgid": number, "filename": name, "split": split,
                        "sentences": [{"raw": s, "tokens": s.lower().split()} for s in sentences]})
    (retrieval / "dataset.json").write_text(json.dumps({"dataset": "rs-captions", "images": entries}, indent=1))

    selo = root / "selo" / "AIR-SLT-mini"
    (selo / "imgs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(images / SELO_SCENE, selo / "imgs" / "0.jpg")
    anno = [{"caption": caption, "jpg_name": "0.jpg", "points": polygons} for caption, polygons in SELO_QUERIES]
    (selo / "anno.json").write_text(json.dumps(anno, indent=1))
    return {"root": root, "zsc": zsc, "retrieval": retrieval, "selo": selo}
