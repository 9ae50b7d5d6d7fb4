# ruff: noqa: I001  (the repo-root evaluate.py makes ruff class the `evaluate` library as first-party)
"""`evaluate` module: top-k accuracy (percent) of zero-shot classification logits."""

import datasets
import evaluate
import numpy as np

from modeling_georsclip.metrics import accuracy

_DESCRIPTION = """Top-k accuracy in percent: a sample counts when its label is among its k highest logits
(GeoRSCLIP reports top-1 on AID, RESISC45 and EuroSAT)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one per sample: the logits over the classes.
    references: one per sample: the integer class label.
    topk: cut-offs (default (1, 5)).
Returns:
    dict with top1, top5, ... (percent).
Example:
    >>> metric = evaluate.load("modeling_georsclip/metrics/modules/zeroshot_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1], topk=[1])
    {'top1': 50.0}
"""

_CITATION = """@article{zhang2024rs5m,
  title={RS5M and GeoRSCLIP: A Large Scale Vision-Language Dataset and A Large Vision-Language Model for Remote Sensing},
  author={Zhang, Zilun and Zhao, Tiancheng and Guo, Yulong and Yin, Jianwei},
  journal={IEEE Transactions on Geoscience and Remote Sensing}, year={2024}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ZeroshotAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, topk=(1, 5)):
        return accuracy(np.asarray(predictions, dtype=np.float32), np.asarray(references), topk=topk)
