"""The model card of a training run, written through the one card writer (``hub.write_model_card``).

Validation scores become model-index rows through ``evaluation.results.model_index_entries``, the same rows
``evaluate.py`` writes, so one metric has one metric type whichever command measured it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evaluation.results import model_index_entries
from ..hub import write_model_card
from .config import TrainConfig
from .stream import SourceSpec


def validation_run(cfg: TrainConfig, results: dict[str, float] | None) -> dict[str, Any]:
    """Final validation recall as an ``evaluate.py`` run record (task ``retrieval``, split ``validation``)."""
    if not results or cfg.val_data is None:
        return {"tasks": {}}
    name = Path(str(SourceSpec.from_any(cfg.val_data).path)).stem
    return {"tasks": {"retrieval": {name: {**results, "split": "validation"}}}}


def write_training_card(folder: Path, cfg: TrainConfig, results: dict[str, float] | None) -> Path:
    """``folder/README.md`` for a trained model: base model, datasets, recipe and validation model-index."""
    base_model = cfg.base_model or (None if cfg.model == "tiny" else cfg.model)
    return write_model_card(
        folder, model_name=cfg.model_name or Path(cfg.output_dir).name, base_model=base_model,
        datasets=cfg.dataset_names or None, recipe=cfg.to_dict(),
        eval_results=model_index_entries(validation_run(cfg, results)),
    )
