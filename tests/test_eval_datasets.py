"""Evaluation dataset loaders on the vendored-sample fixture, class-name normalisation, skip counting, de-dup."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from modeling_georsclip.evaluation.datasets import (
    decode_images,
    deduplicate_against,
    load_eval_dataset,
    normalize_classname,
    shared_images,
)
from modeling_georsclip.evaluation.fixtures import make_eval_fixture

from conftest import SAMPLES


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return make_eval_fixture(tmp_path_factory.mktemp("evaldata"))


def test_classname_normalisation_as_georsclip():
    assert normalize_classname("Sparse_Residential") == "sparse residential"
    assert normalize_classname("Parking/Lot_Area") == "parking lot area"
    assert normalize_classname("AnnualCrop") == "annualcrop"  # no camel-case splitting, as in RS5M's eval


def test_image_folder(fixture_root):
    ds = load_eval_dataset(fixture_root["zsc"], "classification")
    assert ds.classnames == ["airport", "harbor", "parking lot", "playground", "sparse residential", "stadium"]
    assert len(ds.images) == 9 and ds.labels.count(3) == 3  # 8 real images + 1 corrupt file, 3 playgrounds
    images, kept, errors = decode_images(ds.images)
    assert len(images) == 8 and len(errors) == 1 and "corrupt.jpg" in errors[0]
    assert all(im.mode == "RGB" for im in images) and len(kept) == 8


def test_caption_json_split_and_grouping(fixture_root):
    ds = load_eval_dataset(fixture_root["retrieval"], "retrieval", split="test")
    assert len(ds.images) == 5 and len(ds.captions) == 24  # rs5m__00001 is in the train split
    assert all(p.is_file() for p in ds.images)
    stadium = [p.name for p in ds.images].index("cliprsicd__stadium_1.jpg")
    assert [c for c, i in zip(ds.captions, ds.text_to_image, strict=True) if i == stadium] == [
        "Some green trees are around a stadium with a baseball field.",
        "The stadium is very beautiful.",
        "the stadium is very beautiful .",
        "some green trees are around a stadium with a baseball field .",
    ]
    train = load_eval_dataset(fixture_root["retrieval"], "retrieval", split="train")
    assert [p.name for p in train.images] == ["rs5m__00001.jpg"]


def test_airslt_layouts(fixture_root, tmp_path):
    ds = load_eval_dataset(fixture_root["selo"], "selo")
    assert len(ds.queries) == 4 and len(ds.queries[1].regions) == 2
    assert ds.queries[0].image.is_file() and ds.queries[0].regions[0][0] == [490.0, 300.0]
    # the real AIR-SLT annotation file in the published annotations/ layout
    (tmp_path / "annotations").mkdir()
    shutil.copyfile(SAMPLES / "airslt_anno.json", tmp_path / "annotations" / "anno.json")
    real = load_eval_dataset(tmp_path, "selo")
    raw = json.loads((SAMPLES / "airslt_anno.json").read_text())
    assert len(real.queries) == 59 and [len(q.regions) for q in real.queries] == [len(x["points"]) for x in raw]
    assert real.queries[0].caption == "there is a green pond next to the gray road."


def test_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a downloadable Hub dataset"):
        load_eval_dataset("no-such-owner/no-such-dataset", "classification")
    (tmp_path / "dataset.json").write_text(json.dumps({"images": [{"split": "test"}]}))
    with pytest.raises(ValueError, match=r"images\[0\] lacks 'filename'"):
        load_eval_dataset(tmp_path, "retrieval")
    with pytest.raises(ValueError, match="unknown evaluation task"):
        load_eval_dataset(tmp_path, "segmentation")


def test_dedup_rsicd_rsitmd_style(fixture_root, tmp_path):
    """Shared images in another container or re-encoded (as between RSICD .jpg and RSITMD .tif) are found."""
    test = load_eval_dataset(fixture_root["retrieval"], "retrieval")
    other = tmp_path / "other"
    other.mkdir()
    Image.open(test.images[0]).save(other / "renamed.png")  # same pixels, other format
    Image.open(test.images[1]).convert("RGB").save(other / "reencoded.jpg", quality=80)  # lossy copy
    shutil.copyfile(SAMPLES / "images" / "rs5m__00001.jpg", other / "unrelated.jpg")
    entries = [{"filename": n, "split": "train", "sentences": [{"raw": f"caption {i}"}, {"raw": "x"}]}
               for i, n in enumerate(["renamed.png", "reencoded.jpg", "unrelated.jpg"])]
    (other / "dataset.json").write_text(json.dumps({"images": entries}))
    train = load_eval_dataset(other, "retrieval", split="train")

    assert shared_images(train.images, test.images, "bytes") == set()
    assert shared_images(train.images, test.images, "pixels") == {other / "renamed.png"}
    assert shared_images(train.images, test.images, "dhash") == {other / "renamed.png", other / "reencoded.jpg"}
    cleaned, removed = deduplicate_against(train, test, method="dhash")
    assert removed == 2 and [p.name for p in cleaned.images] == ["unrelated.jpg"]
    assert cleaned.captions == ["caption 2", "x"] and cleaned.text_to_image == [0, 0]


SAMPLE_IMAGES = SAMPLES / "images"


def _write_table(folder: Path, rows: dict, features) -> Path:
    from datasets import Dataset

    (folder / "data").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(folder / "data" / "test-00000.parquet"))
    return folder


def test_classification_from_a_datasets_table_with_classlabel(tmp_path):
    from datasets import ClassLabel, Features
    from datasets import Image as ImageFeature

    from modeling_georsclip.evaluation.datasets import decode_images, load_eval_dataset

    airport = (SAMPLE_IMAGES / "remoteclip__airport.jpg").read_bytes()
    stadium = (SAMPLE_IMAGES / "cliprsicd__stadium_1.jpg").read_bytes()
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["Airport", "Dense_Residential/Urban"])})
    rows = {"image": [{"bytes": b, "path": None} for b in (airport, stadium, b"not an image")], "label": [0, 1, 1]}
    dataset = load_eval_dataset(_write_table(tmp_path / "aid", rows, features), "classification")
    assert dataset.name == "aid" and dataset.classnames == ["airport", "dense residential urban"]
    assert dataset.labels == [0, 1, 1] and dataset.images[0] == airport
    images, kept, errors = decode_images(dataset.images)
    assert kept == [0, 1] and len(errors) == 1 and images[0].size == (224, 224)


@pytest.mark.parametrize("layout", ["list", "row_per_caption"])
def test_retrieval_from_a_datasets_table(tmp_path, layout):
    from datasets import Features, Sequence, Value
    from datasets import Image as ImageFeature

    from modeling_georsclip.evaluation.datasets import load_eval_dataset

    a = (SAMPLE_IMAGES / "retrievalsys__00013.jpg").read_bytes()
    b = (SAMPLE_IMAGES / "retrievalsys__00256.jpg").read_bytes()
    if layout == "list":
        features = Features({"image": ImageFeature(), "captions": Sequence(Value("string"))})
        rows = {"image": [{"bytes": a, "path": None}, {"bytes": b, "path": None}],
                "captions": [["a playground", "a red track"], ["a green field"]]}
    else:
        features = Features({"image": ImageFeature(), "caption": Value("string")})
        rows = {"image": [{"bytes": x, "path": None} for x in (a, a, b)],
                "caption": ["a playground", "a red track", "a green field"]}
    dataset = load_eval_dataset(_write_table(tmp_path / "rsicd", rows, features), "retrieval")
    assert dataset.images == [a, b]
    assert dataset.captions == ["a playground", "a red track", "a green field"]
    assert dataset.text_to_image == [0, 0, 1]
