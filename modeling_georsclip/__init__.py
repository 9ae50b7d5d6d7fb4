"""GeoRSCLIP, Hugging Face-native: remote-sensing CLIP models that are plain ``transformers`` CLIP checkpoints.

    from modeling_georsclip import GeoRSCLIPModel, GeoRSCLIPProcessor
    model = GeoRSCLIPModel.from_pretrained("path/or/hub-id")
    processor = GeoRSCLIPProcessor.from_pretrained("path/or/hub-id")
"""

from .modeling import GeoRSCLIPModel, pooled
from .processing import (
    NORMALIZATION_PRESETS,
    GeoRSCLIPProcessor,
    clean_text,
    load_tokenizer,
    make_image_processor,
)

__version__ = "0.1.0"
__all__ = [
    "GeoRSCLIPModel",
    "GeoRSCLIPProcessor",
    "NORMALIZATION_PRESETS",
    "clean_text",
    "load_tokenizer",
    "make_image_processor",
    "pooled",
]
