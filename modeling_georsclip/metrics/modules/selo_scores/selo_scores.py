# ruff: noqa: I001  (the repo-root evaluate.py makes ruff class the `evaluate` library as first-party)
"""`evaluate` module: AIR-SLT semantic-localization scores Rsu, Rda, Ras, Rmi (mean over queries)."""

import datasets
import evaluate
import numpy as np

from modeling_georsclip.metrics import selo_scores

_DESCRIPTION = """Semantic-localization metrics of the AIR-SLT benchmark (SemanticLocalizationMetrics, SLM.py):
Rsu (salient-area proportion, higher better), Rda (attention concentration, higher better), Ras (offset of the
attention centres from the annotated regions, lower better) and Rmi = 0.4 Rsu + 0.35 (1 - Ras) + 0.25 Rda,
averaged over the queries."""

_KWARGS_DESCRIPTION = """
Args:
    probmap: one per query: the H x W probability map in [0, 1] (list of rows).
    regions: one per query: polygons, each a list of [x, y] pixel points (x = column), as AIR-SLT anno.json.
Returns:
    dict with Rsu, Rda, Ras, Rmi (means over the queries).
"""

_CITATION = """@article{yuan2022learning,
  title={Learning to Evaluate Performance of Multimodal Semantic Localization},
  author={Yuan, Zhiqiang and Zhang, Wenkai and others}, journal={arXiv preprint arXiv:2209.06515}, year={2022}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SeloScores(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "probmap": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                    "regions": datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float64")))),
                }
            ),
            reference_urls=["https://github.com/xiaoyuan1996/SemanticLocalizationMetrics"],
        )

    def _compute(self, probmap, regions):
        per_query = [selo_scores(np.asarray(p, dtype=np.float64), r) for p, r in zip(probmap, regions, strict=True)]
        return {key: float(np.mean([q[key] for q in per_query])) for key in ("Rsu", "Rda", "Ras", "Rmi")}
