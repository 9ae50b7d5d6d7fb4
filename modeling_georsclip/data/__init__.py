"""RS5M as a Hub dataset: shard format, builder with the paper's curation steps, keyword filter, dataset card.

The training stream lives in ``training.stream`` and the evaluation datasets in ``evaluation.datasets``;
this package keeps the dataset itself (builder, curation filters, shards, card).
"""

from .filters import (
    CurationReport,
    DuplicateFilter,
    FilterSettings,
    OutlierFilter,
    OutlierScorer,
    dhash,
    phash,
)
from .geometa import GEO_COLUMNS, parse_geo_metadata
from .keywords import RS_KEYWORDS, keyword_filter_parquet, keyword_regex, matches_rs_keywords
from .shards import FEATURES, PUB11_SOURCES, RS3_SOURCES

__all__ = [
    "FEATURES",
    "GEO_COLUMNS",
    "PUB11_SOURCES",
    "RS3_SOURCES",
    "RS_KEYWORDS",
    "CurationReport",
    "DuplicateFilter",
    "FilterSettings",
    "OutlierFilter",
    "OutlierScorer",
    "dhash",
    "keyword_filter_parquet",
    "keyword_regex",
    "matches_rs_keywords",
    "parse_geo_metadata",
    "phash",
]
