"""Prompt templates of the GeoRSCLIP zero-shot evaluation (om-ai-lab/RS5M, ``inference/classname_and_prompt``).

The RS5M evaluation uses one list of 105 templates for AID, RESISC45 and EuroSAT: open_clip's ImageNet
template pattern written for three kinds of imagery ("remote sensing image", "aerial image",
"satellite image"), 35 each, in that order. They are generated here from the pattern.
"""

from __future__ import annotations

IMAGERY = ("remote sensing image", "aerial image", "satellite image")
_QUALITIES = ("low resolution", "bad", "cropped", "bright", "dark", "close-up", "black and white",
              "jpeg corrupted", "blurry", "good")
_SIZES = ("large", "nice", "small", "weird", "cool")


def _templates_for(imagery: str) -> list[str]:
    article = "an" if imagery[0] in "aeiou" else "a"
    noun = f"{article} {imagery}"
    templates = [f"{noun} of many {{}}.", f"{noun} of a {{}}.", f"{noun} of the {{}}.",
                 f"{noun} of the hard to see {{}}.", f"{noun} of a hard to see {{}}."]
    for quality in _QUALITIES:
        templates += [f"a {quality} {imagery} of the {{}}.", f"a {quality} {imagery} of a {{}}."]
    for size in _SIZES:
        templates += [f"{noun} of the {size} {{}}.", f"{noun} of a {size} {{}}."]
    return templates


RS_TEMPLATES: list[str] = [t for imagery in IMAGERY for t in _templates_for(imagery)]

# Per-dataset templates used by the paper (identical lists today; kept per dataset like the reference).
DATASET_TEMPLATES: dict[str, list[str]] = {"aid": RS_TEMPLATES, "resisc45": RS_TEMPLATES, "eurosat": RS_TEMPLATES}


def templates_for(dataset_name: str) -> list[str]:
    """The templates GeoRSCLIP uses for ``dataset_name`` (the RS list for any other image folder too)."""
    return DATASET_TEMPLATES.get(dataset_name.lower().replace("-", "").replace("_", ""), RS_TEMPLATES)
