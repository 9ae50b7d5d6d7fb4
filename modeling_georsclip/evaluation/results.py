"""Evaluation results: JSON, a markdown table with models side by side, and model-index entries."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# task key -> (model-index task type, readable task name, [(metric key, metric type, metric name)])
TASKS: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "zsc": (
        "zero-shot-image-classification",
        "Zero-shot classification",
        [("top1", "accuracy", "Top-1 accuracy"), ("top5", "accuracy", "Top-5 accuracy")],
    ),
    "retrieval": (
        "image-text-retrieval",
        "Image-text retrieval",
        [(f"{d}_R@{k}", "recall", f"{d} R@{k}") for d in ("i2t", "t2i") for k in (1, 5, 10)]
        + [("mR", "mean_recall", "mR")],
    ),
    "selo": (
        "semantic-localization",
        "Semantic localization",
        [("Rsu", "rsu", "Rsu"), ("Rda", "rda", "Rda"), ("Ras", "ras", "Ras (lower is better)"), ("Rmi", "rmi", "Rmi")],
    ),
}


def model_index_entries(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for ``hub.update_model_index``: one per (task, dataset, metric) present in ``results``.

    Each row records the inference precision in the metric's ``args``; results of a reduced-precision run
    also carry it in the metric name (``Top-1 accuracy [bf16]``), so they sit beside the fp32 numbers in
    the card instead of replacing them.
    """
    precision = results.get("precision", "fp32")
    suffix = "" if precision == "fp32" else f" [{precision}]"
    entries = []
    for task, datasets in results.get("tasks", {}).items():
        task_type, task_name, metrics = TASKS[task]
        for dataset_name, scores in datasets.items():
            for key, metric_type, metric_name in metrics:
                if key not in scores:
                    continue
                entries.append({
                    "task_type": task_type,
                    "task_name": task_name,
                    "dataset_name": dataset_name,
                    "dataset_type": scores.get("dataset_id", dataset_name.lower()),
                    "dataset_split": scores.get("split", "test"),
                    "metric_type": metric_type,
                    "metric_name": metric_name + suffix,
                    "metric_value": round(float(scores[key]), 4),
                    "metric_args": {"precision": precision},
                })
    return entries


def _cell(task: str, key: str, value: Any) -> str:
    if key == "n_unreadable":
        return str(int(value))
    return f"{value:.4f}" if task == "selo" else f"{value:.2f}"


def results_markdown(runs: Sequence[dict[str, Any]]) -> str:
    """One markdown table: a row per (task, dataset, metric), a column per model (``runs[i]["model_name"]``)."""
    names = [(run.get("model_name") or str(run.get("model")))
             + ("" if run.get("precision", "fp32") == "fp32" else f" [{run['precision']}]") for run in runs]
    rows: dict[tuple[str, str, str], list[str]] = {}
    for column, run in enumerate(runs):
        for task, datasets in run.get("tasks", {}).items():
            metrics = TASKS[task][2] + [("n_unreadable", "", "unreadable images")]
            for dataset_name, scores in datasets.items():
                for key, _, metric_name in metrics:
                    if key in scores:
                        cells = rows.setdefault((TASKS[task][1], dataset_name, metric_name), [""] * len(runs))
                        cells[column] = _cell(task, key, scores[key])
    lines = ["| task | dataset | metric | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(runs)]
    lines += [f"| {task} | {dataset} | {metric} | " + " | ".join(cells) + " |" for (task, dataset, metric), cells in rows.items()]
    return "\n".join(lines) + "\n"


def load_runs(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Runs from earlier ``--output`` files; every results file has one shape, ``{"runs": [run, ...]}``."""
    runs = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read results file {path}: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
            raise ValueError(f"results file {path} has no \"runs\" list (expected {{\"runs\": [...]}})")
        runs += data["runs"]
    return runs
