"""Evaluation metrics: retrieval recall@k, SeLo (AIR-SLT) scores and zero-shot top-k accuracy.

Also published as ``evaluate`` modules under ``modeling_georsclip/metrics/modules/<name>/``.
"""

from .classification import accuracy
from .retrieval import EmbeddingSimilarity, retrieval_recall
from .selo import selo_scores

__all__ = ["EmbeddingSimilarity", "accuracy", "retrieval_recall", "selo_scores"]
