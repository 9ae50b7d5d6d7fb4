"""The remote-sensing keyword filter, in Python and over parquet with DuckDB and polars."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modeling_georsclip.data.keywords import keyword_filter_parquet, keyword_regex, matches_rs_keywords

from conftest import SAMPLES, TEST_DATA

CAPTIONS = [
    ("A SATELLITE view of Paris", True),
    ("bird's eye view over the harbour", True),
    ("Drone shot of a wedding", True),
    ("aerial photography of farmland", True),
    ("Google Earth screenshot of my street", True),
    ("my cat sleeping on the sofa", False),
    ("the aerialist performs at the circus", False),  # whole words only
    ("a dronestrike documentary poster", False),
    ("", False),
    (None, False),
]


@pytest.mark.parametrize(("caption", "expected"), CAPTIONS)
def test_matches_rs_keywords(caption, expected):
    assert matches_rs_keywords(caption) is expected


def test_custom_keywords_and_empty_list():
    assert matches_rs_keywords("a photo of a wind farm", keywords=["wind farm"])
    assert not matches_rs_keywords("a satellite image", keywords=["wind farm"])
    with pytest.raises(ValueError, match="empty"):
        keyword_regex([])


@pytest.fixture()
def metadata(tmp_path) -> Path:
    """A LAION-style metadata parquet: url, TEXT (the caption), similarity."""
    texts = [c for c, _ in CAPTIONS]
    table = pa.table({
        "url": [f"https://example.org/{i}.jpg" for i in range(len(texts))],
        "TEXT": texts,
        "similarity": [0.1 * i for i in range(len(texts))],
    })
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("engine", ["duckdb", "polars"])
def test_keyword_filter_over_parquet(metadata, tmp_path, engine):
    out = tmp_path / f"kept-{engine}.parquet"
    counts = keyword_filter_parquet(metadata, out, caption_column="TEXT", engine=engine)
    kept = pq.read_table(out).to_pylist()
    expected_texts = [c for c, keep in CAPTIONS if keep]
    assert counts == {"input": len(CAPTIONS), "kept": len(expected_texts)}
    assert [row["TEXT"] for row in kept] == expected_texts  # input order kept
    assert [row["url"] for row in kept] == ["https://example.org/0.jpg", "https://example.org/1.jpg",
                                             "https://example.org/2.jpg", "https://example.org/3.jpg",
                                             "https://example.org/4.jpg"]
    assert set(kept[0]) == {"url", "TEXT", "similarity"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["part-00000.parquet", out.name])


def test_keyword_filter_over_several_files_and_missing_column(metadata, tmp_path):
    second = tmp_path / "part-00001.parquet"
    pq.write_table(pa.table({"url": ["u"], "TEXT": ["an orthophoto mosaic"], "similarity": [1.0]}), second)
    counts = keyword_filter_parquet(str(tmp_path / "part-*.parquet"), tmp_path / "k.parquet", caption_column="TEXT")
    assert counts == {"input": len(CAPTIONS) + 1, "kept": 6}
    with pytest.raises(KeyError, match="caption"):
        keyword_filter_parquet(metadata, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_duckdb_and_python_agree_on_real_captions(tmp_path):
    """RE2 (DuckDB) and Python ``re`` read the one pattern the same way on 2,000 RS3 and the PUB11-like captions."""
    with open(TEST_DATA / "rs3_dump_2k.csv", newline="", encoding="utf-8") as handle:
        texts = [row["caption"] for row in csv.DictReader(handle)]
    with open(SAMPLES / "captions.csv", newline="", encoding="utf-8") as handle:
        texts += [row["caption"] for row in csv.DictReader(handle)]
    path = tmp_path / "captions.parquet"
    pq.write_table(pa.table({"caption": texts, "row": list(range(len(texts)))}), path)
    keyword_filter_parquet(path, tmp_path / "kept.parquet")
    duckdb_rows = pq.read_table(tmp_path / "kept.parquet").column("row").to_pylist()
    python_rows = [i for i, text in enumerate(texts) if matches_rs_keywords(text)]
    assert duckdb_rows == python_rows
    assert 0 < len(python_rows) < len(texts)
    assert re.compile(keyword_regex()).pattern.startswith("(?i)")


def test_img2dataset_command_and_missing_package(tmp_path):
    from modeling_georsclip.data import img2dataset as i2d

    argv = i2d.img2dataset_command("rs.parquet", "shards", url_col="URL", caption_col="TEXT",
                                   distributor="pyspark", save_additional_columns=["similarity"])
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert argv[0] == "img2dataset"
    assert flags["--url_list"] == "rs.parquet" and flags["--url_col"] == "URL" and flags["--caption_col"] == "TEXT"
    assert flags["--distributor"] == "pyspark" and flags["--output_format"] == "webdataset"
    assert flags["--save_additional_columns"] == '["similarity"]'
    with pytest.raises(ValueError, match="distributor"):
        i2d.img2dataset_kwargs("a", "b", distributor="dask")
    try:
        import img2dataset  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install img2dataset"):
            i2d.run_img2dataset("rs.parquet", tmp_path / "shards")
