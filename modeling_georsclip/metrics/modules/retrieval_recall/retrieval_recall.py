# ruff: noqa: I001  (the repo-root evaluate.py makes ruff class the `evaluate` library as first-party)
"""`evaluate` module: image-text retrieval recall@k (clip_benchmark convention), from a similarity matrix."""

import datasets
import evaluate
import numpy as np

from modeling_georsclip.metrics import retrieval_recall

_DESCRIPTION = """Recall@k for image->text (an image is a hit when any of its captions ranks in its top k) and
text->image (a caption is a hit when its image ranks in its top k), in percent, plus their mean mR. This is
the `recall_at_k > 0` convention of clip_benchmark used by GeoRSCLIP, RemoteCLIP and ITRA."""

_KWARGS_DESCRIPTION = """
Args:
    similarity: one row per caption: its scores against every image (n_texts rows of n_images floats).
    text_to_image: one int per caption: the index of the image it describes.
    ks: recall cut-offs (default (1, 5, 10)).
    ties: "optimistic" (default) or "pessimistic" handling of exact score ties.
Returns:
    dict with i2t_R@k, t2i_R@k for each k and mR (percent).
Example:
    >>> metric = evaluate.load("modeling_georsclip/metrics/modules/retrieval_recall")
    >>> metric.compute(similarity=[[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]], text_to_image=[0, 1, 0], ks=[1])
    {'i2t_R@1': 100.0, 't2i_R@1': 100.0, 'mR': 100.0}
"""

_CITATION = """@article{zhang2024rs5m,
  title={RS5M and GeoRSCLIP: A Large Scale Vision-Language Dataset and A Large Vision-Language Model for Remote Sensing},
  author={Zhang, Zilun and Zhao, Tiancheng and Guo, Yulong and Yin, Jianwei},
  journal={IEEE Transactions on Geoscience and Remote Sensing}, year={2024}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"similarity": datasets.Sequence(datasets.Value("float32")), "text_to_image": datasets.Value("int64")}
            ),
            reference_urls=["https://github.com/LAION-AI/CLIP_benchmark"],
        )

    def _compute(self, similarity, text_to_image, ks=(1, 5, 10), ties="optimistic"):
        return retrieval_recall(np.asarray(similarity, dtype=np.float32), np.asarray(text_to_image), ks, ties=ties)
