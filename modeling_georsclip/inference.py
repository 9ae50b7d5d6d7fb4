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
import warnings
from pathlib import Path

import torch

from .log import get_logger
from .modeling import GeoRSCLIPModel
from .processing import GeoRSCLIPProcessor

logger = get_logger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "auto")
# What each precision needs from the device; anything else is a PrecisionError, never a quiet fp32 run.
SUPPORTED = {"cpu": ("fp32", "bf16", "int8"), "cuda": ("fp32", "bf16", "fp16"), "mps": ("fp32", "fp16")}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 matmuls


class ModelLoadError(RuntimeError):
    """A model path/id could not be loaded; the message names it and what is wrong, in one line."""


class PrecisionError(ValueError):
    """A precision this device cannot run (e.g. int8 on a GPU, fp16 on a CPU); names both."""


def add_precision_argument(parser: argparse.ArgumentParser, default: str = "fp32", check: bool = False) -> None:
    """``--precision`` with the same help text on every command that embeds; ``check=True`` adds
    ``--check-precision N`` (commands that write a results record: evaluate)."""
    parser.add_argument(
        "--precision", default=default, choices=PRECISIONS,
        help="inference precision: fp32, bf16 (CPU autocast / GPU), fp16 (GPU), int8 (CPU dynamic quantization "
             f"of Linear layers) or auto (bf16 where the CPU/GPU has native bf16, else fp32); default {default}",
    )
    if check:
        parser.add_argument(
            "--check-precision", type=int, default=0, metavar="N",
            help="also embed N of the run's images and captions in fp32 and record min/mean cosine (and "
                 "zero-shot top-1 agreement) to fp32 in each results run record; 0 (default) skips the check",
        )


def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 dot products (AVX512-BF16 or AMX), where bf16 autocast pays off.

    torch exposes no such query (``get_cpu_capability`` says only "AVX512"; mkldnn's bf16 check is true on
    any AVX512 CPU, where bf16 is emulated and slower than fp32), so read the kernel's CPU flags.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def _device_has_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """The precision that will run on ``device`` (``auto`` resolved); PrecisionError if it cannot run there."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if _device_has_bf16(device) else "fp32"
    supported = SUPPORTED.get(device.type, ("fp32",))
    if precision not in supported:
        raise PrecisionError(
            f"precision {precision} cannot run on device {_device_name(device)}: "
            f"{device.type} supports {', '.join(supported)}"
        )
    if precision == "bf16" and device.type == "cuda" and not _device_has_bf16(device):
        raise PrecisionError(f"precision bf16 cannot run on device {_device_name(device)}: this GPU has no bf16; "
                             "use fp16 or fp32")
    return precision


class Int8PatchEmbedding(torch.nn.Module):
    """A ViT patch embedding (a convolution whose kernel equals its stride) run as an int8 dynamic Linear
    on the flattened patches: the same product, written as the matmul it is.

    Why by hand: ``quantize_dynamic`` covers ``nn.Linear`` only, and this one fp32 convolution took about 10 %
    of the int8 image tower's time on the CPU here (a 3072 x 768 product per ViT-B-32 patch); as an int8
    Linear it runs about 3x faster.
    """

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.patch = conv.kernel_size[0]
        linear = torch.nn.Linear(conv.weight[0].numel(), conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.reshape(conv.out_channels, -1))  # (out, c * kh * kw), conv's order
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        linear.qconfig = torch.ao.quantization.default_dynamic_qconfig
        self.linear = torch.ao.nn.quantized.dynamic.Linear.from_float(linear)
        # transformers' CLIPVisionEmbeddings casts its input to ``patch_embedding.weight.dtype``: keep fp32
        self.register_buffer("weight", torch.empty(0, dtype=torch.float32), persistent=False)

    @staticmethod
    def supports(conv: torch.nn.Module) -> bool:
        """Whether ``conv`` is a plain non-overlapping patch convolution this module reproduces."""
        return (isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == conv.stride and conv.groups == 1
                and conv.kernel_size[0] == conv.kernel_size[1] and conv.padding in ((0, 0), "valid")
                and conv.dilation == (1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = pixels.shape
        rows, cols, p = height // self.patch, width // self.patch, self.patch
        pixels = pixels[..., : rows * p, : cols * p]  # a convolution drops the remainder too
        patches = pixels.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        embeds = self.linear(patches.reshape(batch, rows * cols, channels * p * p))
        return embeds.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2)  # (B, D, rows, cols), as the conv


def quantize_int8(model: GeoRSCLIPModel, inplace: bool = False) -> GeoRSCLIPModel:
    """A copy of ``model`` whose image tower (``vision_model`` and ``visual_projection``) has every
    ``nn.Linear``, and its patch-embedding convolution, dynamically quantized to int8 (weights int8,
    activations quantized per batch); the text tower, position embeddings and layer norms stay fp32.

    Why the image tower only: it is where the CPU time goes (every crop, tile and image), while captions and
    class prompts are embedded once per run. Quantizing the text tower too cost caption fidelity (min cosine
    0.9985 to fp32 on a random ViT-B-32, under the 0.999 the precision guard asks for); the image tower alone
    stays above it and keeps the int8 speed-up of the runs that matter (SeLo, localize, tiles).

    ``torch.ao.quantization.quantize_dynamic`` warns that it is deprecated in favour of torchao, which this
    project does not depend on; it still works in torch 2.14 and is the fastest CPU path measured here, so
    its deprecation warnings are silenced for this one call. ``inplace`` quantizes ``model`` itself instead of
    a copy (no second fp32 model in memory: 4 GB for ViT-H-14).
    """
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    image_tower = {name: qconfig for name in ("vision_model", "visual_projection")}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
        linear_only = {torch.nn.Linear: torch.ao.nn.quantized.dynamic.Linear}  # not the embeddings
        quantized = torch.ao.quantization.quantize_dynamic(model, image_tower, dtype=torch.qint8, mapping=linear_only,
                                                           inplace=inplace)
        embeddings = quantized.vision_model.embeddings
        if Int8PatchEmbedding.supports(embeddings.patch_embedding):
            embeddings.patch_embedding = Int8PatchEmbedding(embeddings.patch_embedding)
    return quantized


def prepare_for_inference(model: GeoRSCLIPModel, precision: str = "fp32", device: str | torch.device | None = None,
                          *, inplace: bool = False):
    """Turn a loaded fp32 model into its inference form for ``precision`` on ``device``; returns the model.

    fp32: the model as is. bf16/fp16: weights stay fp32 and ``image_embeddings``/``text_embeddings`` run
    under ``torch.autocast`` (matmuls in 16 bit, norms and softmax in fp32: on CPU the fast path, on GPU
    within a few percent of a full cast); the model is changed in place, as by ``.to()``. int8 (CPU): a
    quantized copy (the fp32 model is left as it was), or ``model`` itself quantized with ``inplace=True``
    (what ``load_model`` does: no second fp32 copy in memory). ``model.inference_precision`` says
    what runs; PrecisionError (naming precision and device) if the device cannot run it.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    resolved = resolve_precision(precision, device)
    current = getattr(model, "inference_precision", "fp32")
    if current == "int8" and resolved != "int8":
        raise PrecisionError(f"this model was quantized to int8; load it again to run it in {resolved}")
    model = model.to(device).eval()
    if resolved == "int8" and current != "int8":
        model = quantize_int8(model, inplace=inplace)
    model.inference_precision = resolved
    if precision == "auto":
        logger.info("precision auto -> %s on %s", resolved, _device_name(device))
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
    processor = load_processor(name, net.config.vision_config.image_size)
    return prepare_for_inference(net, precision, device, inplace=True), processor  # nobody else holds ``net``


def load_processor(model: str | os.PathLike, image_size: int, preset: str = "clip") -> GeoRSCLIPProcessor:
    """The processor saved with a model, or the default GeoRSCLIP one for its image size (and ``preset``)."""
    try:
        return GeoRSCLIPProcessor.from_pretrained(str(model))
    except (OSError, ValueError, TypeError) as err:
        logger.warning("no processor in %s (%s); using the default GeoRSCLIP processor", model, err)
        return GeoRSCLIPProcessor.default(image_size=image_size, preset=preset)


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
    """:func:`load_model` for command-line entry points: a bad path or a precision the device cannot run is
    one ``error:`` line and exit status 2."""
    try:
        return load_model(model, *args, **kwargs)
    except (ModelLoadError, PrecisionError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _looks_like_hub_id(name: str) -> bool:
    """``owner/name`` with no other separators: a Hub id rather than a relative path."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(parts[0]).exists()
