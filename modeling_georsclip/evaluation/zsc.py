"""Zero-shot scene classification (AID, RESISC45, EuroSAT, any image folder) with RS prompt ensembles.

CLI: ``python -m modeling_georsclip.evaluation.zsc --model DIR_OR_HUB_ID --data DIR_OR_HUB_ID [--mode paper]``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from ..inference import add_precision_argument, load_model_or_exit
from ..metrics import accuracy
from ..modeling import GeoRSCLIPModel
from ..processing import GeoRSCLIPProcessor
from .common import embed_images
from .datasets import ClassificationSet, load_eval_dataset
from .templates import templates_for


def evaluate_zero_shot(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    dataset: ClassificationSet,
    templates: Sequence[str] | None = None,
    mode: str = "paper",
    topk: Sequence[int] = (1, 5),
    batch_size: int = 64,
    accelerator: Any | None = None,
) -> dict[str, Any]:
    """Top-k accuracy (percent) of the prompt-ensemble zero-shot head on ``dataset``.

    ``mode="paper"`` averages raw template embeddings (GeoRSCLIP's evaluation); ``"openclip"`` averages
    normalised ones. Unreadable images are skipped and reported in ``n_unreadable``.
    """
    templates = list(templates or templates_for(dataset.name))
    head = model.zero_shot_head(dataset.classnames, templates, processor, mode=mode)
    embeds, kept, errors = embed_images(model, processor, dataset.images, batch_size, accelerator, desc=dataset.name)
    result: dict[str, Any] = {
        "n_images": len(kept),
        "n_unreadable": len(errors),
        "n_classes": len(dataset.classnames),
        "n_templates": len(templates),
        "head_mode": mode,
    }
    if kept:
        labels = [dataset.labels[i] for i in kept]
        result.update(accuracy(embeds @ head, labels, topk=topk))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="GeoRSCLIP zero-shot classification on an image folder")
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--data", required=True, help="image folder (ROOT/<class>/<image>) or Hub dataset id")
    parser.add_argument("--name", default=None, help="dataset name (picks the templates); default: folder name")
    parser.add_argument("--mode", default="paper", choices=["paper", "openclip"])
    parser.add_argument("--batch-size", type=int, default=64)
    add_precision_argument(parser)
    args = parser.parse_args(argv)
    model, processor = load_model_or_exit(args.model, precision=args.precision)
    dataset = load_eval_dataset(args.data, "classification", name=args.name)
    result = evaluate_zero_shot(model, processor, dataset, mode=args.mode, batch_size=args.batch_size)
    print(json.dumps({"precision": model.inference_precision, **result}, indent=2))


if __name__ == "__main__":
    main()
