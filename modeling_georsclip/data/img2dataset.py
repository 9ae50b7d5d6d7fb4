"""Download keyword-filtered URL lists into webdataset shards with img2dataset (not a hand-written downloader).

img2dataset handles retries, resizing, rate limits, and distributes over ``multiprocessing``, ``pyspark``
or ``ray``; it is an optional dependency (``pip install img2dataset``). This module only builds its
arguments from the project's conventions, so the same call runs on a laptop or a Spark cluster:

    from modeling_georsclip.data.keywords import keyword_filter_parquet
    from modeling_georsclip.data.img2dataset import img2dataset_command, run_img2dataset
    keyword_filter_parquet("laion2B-en/*.parquet", "rs.parquet", caption_column="TEXT")
    print(" ".join(img2dataset_command("rs.parquet", "shards/", url_col="URL", caption_col="TEXT")))
    run_img2dataset("rs.parquet", "shards/", url_col="URL", caption_col="TEXT", distributor="pyspark")

The resulting ``shards/*.tar`` (``KEY.jpg``, ``KEY.txt``, ``KEY.json``) feed the builder with
``--rs5m-tars 'shards/*.tar'``, which applies the remaining curation steps.
"""

from __future__ import annotations

import os
import shlex
from typing import Any


def img2dataset_kwargs(
    url_list: str | os.PathLike,
    output_folder: str | os.PathLike,
    *,
    input_format: str = "parquet",
    url_col: str = "url",
    caption_col: str = "caption",
    output_format: str = "webdataset",
    image_size: int = 512,
    resize_mode: str = "keep_ratio",
    resize_only_if_bigger: bool = True,
    processes_count: int = 16,
    thread_count: int = 64,
    distributor: str = "multiprocessing",
    number_sample_per_shard: int = 10_000,
    save_additional_columns: list[str] | None = None,
    incremental_mode: str = "incremental",
    **extra: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``img2dataset.download`` (also the CLI flags, see ``img2dataset_command``)."""
    if distributor not in ("multiprocessing", "pyspark", "ray"):
        raise ValueError(f"unknown img2dataset distributor {distributor!r}: multiprocessing, pyspark or ray")
    kwargs: dict[str, Any] = {
        "url_list": str(url_list),
        "output_folder": str(output_folder),
        "input_format": input_format,
        "url_col": url_col,
        "caption_col": caption_col,
        "output_format": output_format,
        "image_size": image_size,
        "resize_mode": resize_mode,
        "resize_only_if_bigger": resize_only_if_bigger,
        "processes_count": processes_count,
        "thread_count": thread_count,
        "distributor": distributor,
        "number_sample_per_shard": number_sample_per_shard,
        "incremental_mode": incremental_mode,
        "enable_wandb": False,
    }
    if save_additional_columns:
        kwargs["save_additional_columns"] = list(save_additional_columns)
    kwargs.update(extra)
    return kwargs


def img2dataset_command(url_list, output_folder, **options: Any) -> list[str]:
    """The equivalent ``img2dataset`` command line (argv list), e.g. for a cluster job script."""
    argv = ["img2dataset"]
    for name, value in img2dataset_kwargs(url_list, output_folder, **options).items():
        argv += [f"--{name}", str(value) if not isinstance(value, list) else repr(value).replace("'", '"')]
    return argv


def run_img2dataset(url_list, output_folder, **options: Any) -> None:
    """Call ``img2dataset.download``; a clear ImportError when img2dataset is not installed."""
    try:
        from img2dataset import download
    except ImportError as err:
        command = shlex.join(img2dataset_command(url_list, output_folder, **options))
        raise ImportError(f"img2dataset is not installed: pip install img2dataset  (then run: {command})") from err
    download(**img2dataset_kwargs(url_list, output_folder, **options))
