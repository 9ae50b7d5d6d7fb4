"""Image-text retrieval (RSICD, RSITMD, UCM-captions, Sydney-captions test splits): recall@1/5/10 and mR.

CLI: ``python -m modeling_georsclip.evaluation.retrieval --model DIR_OR_HUB_ID --data DIR_OR_HUB_ID``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from ..inference import add_precision_argument, load_model_or_exit
from ..metrics import EmbeddingSimilarity, retrieval_recall
from ..modeling import GeoRSCLIPModel
from ..processing import GeoRSCLIPProcessor
from .common import embed_images
from .datasets import RetrievalSet, drop_images, load_eval_dataset


def evaluate_retrieval(
    model: GeoRSCLIPModel,
    processor: GeoRSCLIPProcessor,
    dataset: RetrievalSet,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    accelerator: Any | None = None,
) -> dict[str, Any]:
    """Recall@k (percent) both ways plus mR; unreadable images are dropped with their captions and counted."""
    embeds, kept, errors = embed_images(model, processor, dataset.images, batch_size, accelerator, desc=dataset.name)
    readable = {dataset.images[i] for i in kept}
    usable, _ = drop_images(dataset, set(dataset.images) - readable)
    result: dict[str, Any] = {
        "n_images": len(usable.images),
        "n_captions": len(usable.captions),
        "n_unreadable": len(errors),
    }
    if usable.captions:
        texts = model.text_embeddings(usable.captions, processor, progress=True)
        result.update(retrieval_recall(EmbeddingSimilarity(texts, embeds), usable.text_to_image, ks))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="GeoRSCLIP image-text retrieval on a Karpathy-style caption set")
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--data", required=True, help="folder with the caption JSON and images, or Hub dataset id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=64)
    add_precision_argument(parser)
    args = parser.parse_args(argv)
    model, processor = load_model_or_exit(args.model, precision=args.precision)
    dataset = load_eval_dataset(args.data, "retrieval", split=args.split)
    result = evaluate_retrieval(model, processor, dataset, batch_size=args.batch_size)
    print(json.dumps({"precision": model.inference_precision, **result}, indent=2))


if __name__ == "__main__":
    main()
