"""One way to load a model for inference, in the precision the user asked for.

Every command that embeds (``evaluate``, ``localize``, ``classify_tiles``, the builder's outlier filter, the
demo) loads through ``load_model`` and exposes ``--precision`` through ``add_precision_argument``, so a model
path error reads the same everywhere and a precision is never silently swapped for another.

    model, processor = load_model("GeoRSCLIP-ViT-B-32", device="cpu", precision="bf16")
    feats = model.image_embeddings(pixels)          # runs in bf16, returns float32 unit vectors on CPU

``model.inference_precision`` records what actually runs (``auto`` resolved), for results and model cards.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from .log import get_logger
from .modeling import GeoRSCLIPModel
from .processing import GeoRSCLIPProcessor

logger = get_logger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "auto")


class ModelLoadError(RuntimeError):
    """A model path/id could not be loaded; the message names it and what is wrong, in one line."""


class PrecisionError(ValueError):
    """A precision this device cannot run (e.g. int8 on a GPU, fp16 on a CPU); names both."""


def add_precision_argument(parser: argparse.ArgumentParser, default: str = "fp32") -> None:
    """``--precision`` (and ``--check-precision N``) with the same help text on every command that embeds."""
    parser.add_argument(
        "--precision", default=default, choices=PRECISIONS,
        help="inference precision: fp32, bf16, fp16 (GPU), int8 (CPU dynamic quantization) or auto "
             f"(bf16 where the CPU/GPU has it, else fp32); default {default}",
    )


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """The precision that will run on ``device`` (``auto`` resolved); PrecisionError if it cannot run there."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision in ("fp32", "auto"):
        return "fp32"
    raise PrecisionError(f"precision {precision!r} is not implemented yet on {torch.device(device).type}")


def prepare_for_inference(model: GeoRSCLIPModel, precision: str = "fp32", device: str | torch.device | None = None):
    """Turn a loaded fp32 model into its inference form for ``precision`` on ``device``; returns the model."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    resolved = resolve_precision(precision, device)
    model = model.to(device).eval()
    model.inference_precision = resolved
    return model


def load_model(
    model: str | os.PathLike, device: str | torch.device | None = None, precision: str = "fp32"
) -> tuple[GeoRSCLIPModel, GeoRSCLIPProcessor]:
    """``(GeoRSCLIPModel, GeoRSCLIPProcessor)`` from a folder or Hub id, in eval mode and ``precision``.

    A missing folder, a folder without ``config.json`` or with unreadable weights raises ModelLoadError naming
    the path (instead of a transformers/safetensors traceback). A checkpoint without processor files gets the
    default GeoRSCLIP processor for its image size.
    """
    name = str(model)
    net = load_pretrained(name).eval()
    try:
        processor = GeoRSCLIPProcessor.from_pretrained(name)
    except (OSError, ValueError, TypeError) as err:
        logger.warning("no processor in %s (%s); using the default GeoRSCLIP processor", name, err)
        processor = GeoRSCLIPProcessor.default(image_size=net.config.vision_config.image_size)
    return prepare_for_inference(net, precision, device), processor


def load_pretrained(model: str | os.PathLike) -> GeoRSCLIPModel:
    """The fp32 ``GeoRSCLIPModel`` at a folder or Hub id (for training too); ModelLoadError naming the path.

    Covers a missing folder, a folder without ``config.json`` and unreadable or truncated weights, which
    transformers and safetensors report as multi-line tracebacks of their own.
    """
    from safetensors import SafetensorError

    name = str(model)
    local = check_model_path(name)
    try:
        return GeoRSCLIPModel.from_pretrained(str(local) if local.exists() else name, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load model {name}: {first}") from err


def check_model_path(name: str) -> Path:
    """Cheap checks before loading (no weights read): a local-looking ``name`` must be a folder with
    ``config.json``. Returns the expanded local path (a Hub id comes back as a path that does not exist)."""
    local = Path(name).expanduser()
    if local.exists() or name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub_id(name):
        if not local.is_dir():
            raise ModelLoadError(f"model folder not found: {name}")
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{name} has no config.json: not a transformers model folder")
    return local


def load_model_or_exit(model: str | os.PathLike, *args, **kwargs) -> tuple[GeoRSCLIPModel, GeoRSCLIPProcessor]:
    """:func:`load_model` for command-line entry points: a ModelLoadError is one ``error:`` line, exit 2."""
    try:
        return load_model(model, *args, **kwargs)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _looks_like_hub_id(name: str) -> bool:
    """``owner/name`` with no other separators: a Hub id rather than a relative path."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(parts[0]).exists()
