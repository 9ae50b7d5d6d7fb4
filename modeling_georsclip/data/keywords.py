"""The remote-sensing keyword filter, in Python and as one columnar query over parquet metadata.

RS5M's PUB11 subset starts from billions of caption rows (LAION-2B alone is 2.3B); the first curation
step keeps the rows whose caption mentions remote sensing. At that scale the filter must run where the
metadata lives, column by column, without touching images: ``keyword_filter_parquet`` does it with DuckDB
(default) or polars over any number of parquet files and writes the kept rows (all columns) to one parquet
file that img2dataset can then download (see ``modeling_georsclip.data.img2dataset``).

The same step on a Spark cluster (one pattern for all three engines: RE2 / Rust regex / Java regex all
accept ``(?i)`` and ``\\b``)::

    from pyspark.sql import SparkSession, functions as F
    from modeling_georsclip.data.keywords import keyword_regex
    spark = SparkSession.builder.getOrCreate()
    rows = spark.read.parquet("s3://bucket/laion2B-en/*.parquet")
    kept = rows.filter(F.col("caption").rlike(keyword_regex()))
    kept.write.parquet("s3://bucket/laion2B-en-rs/")

(``caption`` is ``TEXT`` in the LAION metadata; pass ``caption_column="TEXT"`` here.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from ..io import atomic_file

# Words and phrases that mark a caption as describing an overhead / Earth-observation image. The RS5M paper
# describes its keyword list only in prose; this list follows the same idea (platform, sensor, viewpoint and
# product names), lower-case, matched as whole words. Extend it with ``keywords=``.
RS_KEYWORDS: tuple[str, ...] = (
    "remote sensing",
    "remotely sensed",
    "satellite",
    "satellites",
    "aerial",
    "aerials",
    "airborne",
    "spaceborne",
    "overhead view",
    "overhead shot",
    "top view",
    "top-down",
    "top down view",
    "bird's eye",
    "birds eye",
    "bird's-eye",
    "birdseye",
    "drone",
    "drone view",
    "uav",
    "quadcopter",
    "orthophoto",
    "orthoimage",
    "orthomosaic",
    "google earth",
    "google maps",
    "landsat",
    "sentinel-2",
    "sentinel 2",
    "sentinel-1",
    "modis",
    "worldview",
    "quickbird",
    "spot satellite",
    "gaofen",
    "planetscope",
    "earth observation",
    "from space",
    "from above",
    "high altitude",
    "multispectral",
    "hyperspectral",
    "synthetic aperture radar",
    "sar image",
    "lidar",
)


def keyword_regex(keywords: Sequence[str] = RS_KEYWORDS) -> str:
    """A case-insensitive whole-word alternation accepted by Python ``re``, DuckDB (RE2), polars and Spark."""
    if not keywords:
        raise ValueError("keyword list is empty")
    # Longest first so "drone view" wins over "drone" in match spans; order does not change what matches.
    alternatives = sorted({k.strip().lower() for k in keywords if k.strip()}, key=len, reverse=True)
    escaped = [re.escape(k).replace(r"\ ", " ") for k in alternatives]
    return r"(?i)\b(?:" + "|".join(escaped) + r")\b"


@lru_cache(maxsize=8)
def _compiled(keywords: tuple[str, ...]) -> re.Pattern:
    return re.compile(keyword_regex(keywords))


def matches_rs_keywords(caption: str | None, keywords: Sequence[str] = RS_KEYWORDS) -> bool:
    """True when ``caption`` mentions at least one keyword (whole words, any case)."""
    if not caption:
        return False
    return _compiled(tuple(keywords)).search(caption) is not None


def _paths(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise ValueError("no parquet input given")
    return [str(p) for p in items]


def keyword_filter_parquet(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    output: str | os.PathLike,
    *,
    caption_column: str = "caption",
    keywords: Sequence[str] = RS_KEYWORDS,
    engine: str = "duckdb",
) -> dict[str, int]:
    """Keep the rows of ``inputs`` (parquet files or globs) whose ``caption_column`` matches a keyword.

    All columns are kept, row order is the input order, and ``output`` appears only when complete.
    Returns ``{"input": rows_read, "kept": rows_written}``.
    """
    paths = _paths(inputs)
    pattern = keyword_regex(keywords)
    output = Path(output)
    if engine == "duckdb":
        import duckdb

        with duckdb.connect() as con:
            rows = con.read_parquet(paths, union_by_name=True)
            if caption_column not in rows.columns:
                raise KeyError(f"column {caption_column!r} not in {paths}: columns are {rows.columns}")
            total = rows.aggregate("count(*)").fetchall()[0][0]
            match = duckdb.FunctionExpression(
                "regexp_matches", duckdb.ColumnExpression(caption_column), duckdb.ConstantExpression(pattern)
            )
            with atomic_file(output, "wb") as handle:
                # DuckDB writes by path: fill the temp file atomic_file renames into place on success.
                rows.filter(match).write_parquet(handle.name)
            kept = con.read_parquet(str(output)).aggregate("count(*)").fetchall()[0][0]
        return {"input": int(total), "kept": int(kept)}
    if engine == "polars":
        import polars as pl

        frame = pl.scan_parquet(paths)
        if caption_column not in frame.collect_schema().names():
            raise KeyError(f"column {caption_column!r} not in {paths}")
        total = frame.select(pl.len()).collect().item()
        kept_frame = frame.filter(pl.col(caption_column).str.contains(pattern)).collect()
        with atomic_file(output, "wb") as handle:
            kept_frame.write_parquet(handle)
        return {"input": int(total), "kept": kept_frame.height}
    raise ValueError(f"unknown engine {engine!r}: use 'duckdb' or 'polars'")
