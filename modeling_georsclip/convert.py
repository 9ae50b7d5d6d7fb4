"""Convert an open_clip checkpoint (GeoRSCLIP, RemoteCLIP, SkyCLIP, ...) into a plain transformers CLIP folder.

    python -m modeling_georsclip.convert --checkpoint PATH --arch ARCH --output DIR [--push-to-hub REPO_ID]

``PATH`` is a local file or ``hf://OWNER/REPO[@REVISION]/path/in/repo`` (fetched with
``huggingface_hub.hf_hub_download``). Accepted contents, always read with ``torch.load(weights_only=True)``
or safetensors:

- a raw open_clip ``state_dict`` (the GeoRSCLIP / RemoteCLIP releases);
- an open_clip training checkpoint ``{"epoch": ..., "state_dict": {"module.visual...": ...}, ...}``;
- an ITRA checkpoint (RemoteCLIP's and RS5M's training code): ``text_backbone.*`` is the open_clip model
  without its visual tower, ``image_backbone.*`` is ``visual.*``, ``logit_scale`` sits at the top;
- a ``.safetensors`` file holding any of the above key layouts.

``ARCH`` is an open_clip model name from :data:`ARCHS` (or the path of an open_clip model-config JSON for
custom ViT sizes). Nothing from open_clip is needed at run time; when open_clip *is* installed the
converter ends with a parity check against it (transformers-converter style) and refuses to write the
output when the embeddings differ by more than 1e-4.

The activation is the classic trap: the weights do not record it. open_clip's ``ViT-B-32`` uses exact GELU;
models fine-tuned from OpenAI CLIP weights need the ``-quickgelu`` name. Which arch each public checkpoint
needs (the converter refuses a mismatch for the file names below unless ``--force-arch``):

| model | checkpoint | `--arch` | initialised from |
|---|---|---|---|
| GeoRSCLIP ViT-B-32 | `hf://Zilun/GeoRSCLIP/ckpt/RS5M_ViT-B-32.pt` | `ViT-B-32-quickgelu` | OpenAI CLIP (QuickGELU) |
| GeoRSCLIP ViT-B-32, retrieval-tuned | `hf://Zilun/GeoRSCLIP/ckpt/RS5M_ViT-B-32_RET-2.pt` | `ViT-B-32-quickgelu` | OpenAI CLIP (QuickGELU) |
| GeoRSCLIP ViT-H-14 | `hf://Zilun/GeoRSCLIP/ckpt/RS5M_ViT-H-14.pt` | `ViT-H-14` | LAION-2B s32b_b79k (GELU) |
| RemoteCLIP ViT-B-32 | `hf://chendelong/RemoteCLIP/RemoteCLIP-ViT-B-32.pt` | `ViT-B-32-quickgelu` | OpenAI CLIP (QuickGELU) |
| RemoteCLIP ViT-L-14 | `hf://chendelong/RemoteCLIP/RemoteCLIP-ViT-L-14.pt` | `ViT-L-14-quickgelu` | OpenAI CLIP (QuickGELU) |
| SkyCLIP ViT-L-14 | `SkyCLIP_ViT_L14_top30pct.zip` (and the other `SkyCLIP_ViT_L14_*`) -> `epoch_20.pt` | `ViT-L-14-quickgelu` | OpenAI CLIP (QuickGELU) |
| SkyCLIP ViT-B-32 | `SkyCLIP_ViT_B32_top50pct.zip` -> `epoch_20.pt` | `ViT-B-32` | LAION-2B e16 (GELU) |

Sources: RS5M ``inference/inference.py`` builds B-32 with ``pretrained="openai"`` (open_clip then uses
QuickGELU) and H-14 with ``pretrained="laion2b_s32b_b79k"``; RemoteCLIP was trained with ITRA from OpenAI
weights (its README's own snippet loads ``ViT-L-14``, i.e. GELU, which does not match training); SkyScript's
README trains ``ViT-L-14`` from ``openai`` and ``ViT-B-32`` from ``laion2b_e16``. SkyCLIP is distributed as
zip files of open_clip training logs on ``opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/``:
unzip and pass the ``.pt`` file (a ``{"state_dict": {"module.*"}}`` training checkpoint). RemoteCLIP-RN50
(a ResNet tower) is not supported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .hub import write_model_card
from .io import sha256_file
from .log import get_logger
from .resources import arch_names, get_arch_config

logger = get_logger(__name__)

PARITY_TOLERANCE = 1e-4
BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID = 49406, 49407, 49407
LAYER_NORM_EPS = 1e-5  # open_clip uses torch.nn.LayerNorm's default
# Captions for the final parity check (RSITMD test captions; the last one is longer than 77 tokens).
PARITY_CAPTIONS = (
    "Two large ships loaded with cargo were moored on both sides of the gray port.",
    "a baseball field beside a green amusement park is surrounded by trees",
    "Many planes are parked next to a long building in an airport.",
    " ".join(["A dense residential area with red roofs, narrow roads and a few green trees"] * 6),
)


class ConversionError(Exception):
    """A problem with the user's input (checkpoint, arch, output): reported as one line, exit status 1."""


# ----------------------------------------------------------------------------------------------- arch table
@dataclass(frozen=True)
class ArchSpec:
    """Shape of an open_clip ViT CLIP model: everything the conversion needs, no open_clip import."""

    name: str
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    quick_gelu: bool
    context_length: int = 77
    vocab_size: int = 49408

    @property
    def activation(self) -> str:
        """The transformers ``hidden_act`` name: ``quick_gelu`` (OpenAI weights) or ``gelu`` (exact erf GELU)."""
        return "quick_gelu" if self.quick_gelu else "gelu"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def clip_config(self, logit_scale: float | None = None):
        """The transformers ``CLIPConfig`` for this arch (model_type ``clip``); no ``logit_scale``: CLIP's init."""
        from transformers import CLIPConfig

        text = dict(
            vocab_size=self.vocab_size, hidden_size=self.text_width, intermediate_size=self.text_mlp,
            num_hidden_layers=self.text_layers, num_attention_heads=self.text_heads,
            max_position_embeddings=self.context_length, hidden_act=self.activation,
            layer_norm_eps=LAYER_NORM_EPS, projection_dim=self.embed_dim,
            bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID,
        )
        vision = dict(
            hidden_size=self.vision_width, intermediate_size=self.vision_mlp,
            num_hidden_layers=self.vision_layers, num_attention_heads=self.vision_heads,
            image_size=self.image_size, patch_size=self.patch_size, hidden_act=self.activation,
            layer_norm_eps=LAYER_NORM_EPS, projection_dim=self.embed_dim,
        )
        scale = {} if logit_scale is None else {"logit_scale_init_value": float(logit_scale)}
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=self.embed_dim, **scale)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """open_clip state-dict key -> shape for this arch."""
        shapes: dict[str, tuple[int, ...]] = {
            "logit_scale": (),
            "token_embedding.weight": (self.vocab_size, self.text_width),
            "positional_embedding": (self.context_length, self.text_width),
            "ln_final.weight": (self.text_width,),
            "ln_final.bias": (self.text_width,),
            "text_projection": (self.text_width, self.embed_dim),
            "visual.class_embedding": (self.vision_width,),
            "visual.positional_embedding": (self.num_patches + 1, self.vision_width),
            "visual.conv1.weight": (self.vision_width, 3, self.patch_size, self.patch_size),
            "visual.ln_pre.weight": (self.vision_width,),
            "visual.ln_pre.bias": (self.vision_width,),
            "visual.ln_post.weight": (self.vision_width,),
            "visual.ln_post.bias": (self.vision_width,),
            "visual.proj": (self.vision_width, self.embed_dim),
        }
        towers = (
            ("transformer.resblocks", self.text_layers, self.text_width, self.text_mlp),
            ("visual.transformer.resblocks", self.vision_layers, self.vision_width, self.vision_mlp),
        )
        for prefix, layers, width, mlp in towers:
            for i in range(layers):
                block = f"{prefix}.{i}"
                shapes.update({
                    f"{block}.ln_1.weight": (width,), f"{block}.ln_1.bias": (width,),
                    f"{block}.attn.in_proj_weight": (3 * width, width), f"{block}.attn.in_proj_bias": (3 * width,),
                    f"{block}.attn.out_proj.weight": (width, width), f"{block}.attn.out_proj.bias": (width,),
                    f"{block}.ln_2.weight": (width,), f"{block}.ln_2.bias": (width,),
                    f"{block}.mlp.c_fc.weight": (mlp, width), f"{block}.mlp.c_fc.bias": (mlp,),
                    f"{block}.mlp.c_proj.weight": (width, mlp), f"{block}.mlp.c_proj.bias": (width,),
                })
        return shapes

    # ---------------------------------------------------------------- open_clip model-config JSON
    _TOP_KEYS = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "custom_text"}
    _VISION_KEYS = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size", "patch_dropout"}
    _TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}

    @classmethod
    def from_open_clip_config(cls, name: str, cfg: Mapping[str, Any]) -> ArchSpec:
        """Build a spec from an open_clip model config (the ``model_configs/*.json`` format).

        Only the plain ViT CLIP is convertible to ``CLIPModel``; any other open_clip option (timm or HF
        towers, attentional pooling, layer scale, SigLIP bias, ...) is rejected by name.
        """
        vision, text = dict(cfg.get("vision_cfg") or {}), dict(cfg.get("text_cfg") or {})
        for where, keys, allowed in (
            ("", set(cfg), cls._TOP_KEYS), ("vision_cfg.", set(vision), cls._VISION_KEYS),
            ("text_cfg.", set(text), cls._TEXT_KEYS),
        ):
            extra = sorted(keys - allowed)
            if extra:
                raise ConversionError(
                    f"arch {name}: open_clip option {where}{extra[0]} has no transformers CLIPModel equivalent"
                )
        if cfg.get("custom_text"):
            raise ConversionError(f"arch {name}: custom_text towers are not supported")
        if not isinstance(vision.get("layers", 12), int):
            raise ConversionError(f"arch {name}: ResNet image towers are not supported (CLIPModel is ViT only)")
        image_size, patch_size = vision.get("image_size", 224), vision.get("patch_size", 16)
        for label, value in (("image_size", image_size), ("patch_size", patch_size)):
            if isinstance(value, (list, tuple)):
                if len(set(value)) != 1:
                    raise ConversionError(f"arch {name}: non-square {label} {value} is not supported")
        image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
        patch_size = patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size
        v_width, t_width = int(vision.get("width", 768)), int(text.get("width", 512))
        return cls(
            name=name,
            embed_dim=int(cfg["embed_dim"]),
            image_size=int(image_size),
            patch_size=int(patch_size),
            vision_width=v_width,
            vision_layers=int(vision.get("layers", 12)),
            vision_heads=v_width // int(vision.get("head_width", 64)),
            vision_mlp=int(v_width * float(vision.get("mlp_ratio", 4.0))),
            text_width=t_width,
            text_layers=int(text.get("layers", 12)),
            text_heads=int(text.get("heads", 8)),
            text_mlp=int(t_width * float(text.get("mlp_ratio", 4.0))),
            quick_gelu=bool(cfg.get("quick_gelu", False)),
            context_length=int(text.get("context_length", 77)),
            vocab_size=int(text.get("vocab_size", 49408)),
        )

    def open_clip_config(self) -> dict[str, Any]:
        """This spec in open_clip's model-config format (what ``open_clip.model.CLIP(**cfg)`` takes)."""
        return {
            "embed_dim": self.embed_dim,
            "quick_gelu": self.quick_gelu,
            "vision_cfg": {
                "image_size": self.image_size, "layers": self.vision_layers, "width": self.vision_width,
                "head_width": self.vision_width // self.vision_heads, "mlp_ratio": self.vision_mlp / self.vision_width,
                "patch_size": self.patch_size,
            },
            "text_cfg": {
                "context_length": self.context_length, "vocab_size": self.vocab_size, "width": self.text_width,
                "heads": self.text_heads, "layers": self.text_layers, "mlp_ratio": self.text_mlp / self.text_width,
            },
        }


def clip_config_from_arch(cfg: Mapping[str, Any], logit_scale: float | None = None):
    """The one way an open_clip arch dict (``archs/*.json`` format) becomes a transformers ``CLIPConfig``."""
    return ArchSpec.from_open_clip_config("arch", cfg).clip_config(logit_scale)


# open_clip names -> shapes, read from the packaged open_clip model configs (modeling_georsclip/archs/*.json,
# compared with the installed open_clip's own files by the tests), so conversion needs no open_clip at run time.
ARCHS: dict[str, ArchSpec] = {
    name: ArchSpec.from_open_clip_config(name, get_arch_config(name)) for name in arch_names()
}


@dataclass(frozen=True)
class KnownCheckpoint:
    """A published open_clip checkpoint whose file name tells which arch and base model it needs."""

    pattern: str  # regex searched in the checkpoint path / hf:// URL
    model: str
    arch: str
    base_model: str
    license: str
    initialised_from: str


KNOWN_CHECKPOINTS: tuple[KnownCheckpoint, ...] = (
    KnownCheckpoint(r"RS5M_ViT-B-32_RET-2\.pt$", "GeoRSCLIP ViT-B-32 (RET-2)", "ViT-B-32-quickgelu",
                    "openai/clip-vit-base-patch32", "mit", "OpenAI CLIP ViT-B/32 (QuickGELU)"),
    KnownCheckpoint(r"RS5M_ViT-B-32\.pt$", "GeoRSCLIP ViT-B-32", "ViT-B-32-quickgelu",
                    "openai/clip-vit-base-patch32", "mit", "OpenAI CLIP ViT-B/32 (QuickGELU)"),
    KnownCheckpoint(r"RS5M_ViT-H-14\.pt$", "GeoRSCLIP ViT-H-14", "ViT-H-14",
                    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "mit", "LAION-2B ViT-H-14 s32b_b79k (GELU)"),
    KnownCheckpoint(r"RemoteCLIP-ViT-B-32\.pt$", "RemoteCLIP ViT-B-32", "ViT-B-32-quickgelu",
                    "openai/clip-vit-base-patch32", "apache-2.0", "OpenAI CLIP ViT-B/32 (QuickGELU)"),
    KnownCheckpoint(r"RemoteCLIP-ViT-L-14\.pt$", "RemoteCLIP ViT-L-14", "ViT-L-14-quickgelu",
                    "openai/clip-vit-large-patch14", "apache-2.0", "OpenAI CLIP ViT-L/14 (QuickGELU)"),
    KnownCheckpoint(r"SkyCLIP_ViT_L14", "SkyCLIP ViT-L-14", "ViT-L-14-quickgelu",
                    "openai/clip-vit-large-patch14", "other", "OpenAI CLIP ViT-L/14 (QuickGELU)"),
    KnownCheckpoint(r"SkyCLIP_ViT_B32", "SkyCLIP ViT-B-32", "ViT-B-32",
                    "timm/vit_base_patch32_clip_224.laion2b_e16", "other", "open_clip ViT-B-32 laion2b_e16 (GELU)"),
)


def known_checkpoint(source: str) -> KnownCheckpoint | None:
    """The published checkpoint ``source`` (a path or hf:// URL) names, if any."""
    normalized = source.replace("\\", "/")
    for known in KNOWN_CHECKPOINTS:
        if re.search(known.pattern, normalized):
            return known
    return None


def resolve_arch(arch: str) -> ArchSpec:
    """An :data:`ARCHS` name (``ViT-B/32`` spelling accepted) or the path of an open_clip config JSON."""
    name = arch.replace("/", "-")
    if name in ARCHS:
        return ARCHS[name]
    if name.startswith("RN"):
        raise ConversionError(f"--arch {arch}: ResNet towers are not supported (transformers CLIPModel is ViT only)")
    if not arch.endswith(".json"):
        raise ConversionError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)} or an open_clip config .json")
    try:
        cfg = get_arch_config(arch)
    except ValueError as err:
        raise ConversionError(str(err)) from err
    return ArchSpec.from_open_clip_config(Path(arch).stem, cfg)


# --------------------------------------------------------------------------------------- reading checkpoints
def parse_hf_url(url: str) -> tuple[str, str, str | None]:
    """``hf://OWNER/REPO[@REVISION]/path/in/repo`` -> (repo_id, filename, revision)."""
    if not url.startswith("hf://"):
        raise ConversionError(f"not an hf:// URL: {url}")
    parts = url[len("hf://"):].strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        raise ConversionError(f"malformed Hub path {url!r}: expected hf://OWNER/REPO/path/in/repo")
    owner, repo, filename = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    return f"{owner}/{repo}", filename, revision


def fetch_checkpoint(source: str, cache_dir: str | None = None) -> Path:
    """Local path of ``source``, downloading ``hf://`` URLs with ``huggingface_hub.hf_hub_download``."""
    if not source.startswith("hf://"):
        path = Path(source).expanduser()
        if not path.exists():
            raise ConversionError(f"checkpoint not found: {source}")
        if path.is_dir():
            raise ConversionError(f"checkpoint {source} is a folder, not a file")
        return path
    repo_id, filename, revision = parse_hf_url(source)
    from huggingface_hub import hf_hub_download

    logger.info("downloading %s from the Hub repo %s", filename, repo_id)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
    except Exception as err:  # noqa: BLE001 - every Hub failure becomes one clear line
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConversionError(f"cannot download {source}: {type(err).__name__}: {first_line}") from err


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def read_checkpoint(path: Path, label: str | None = None) -> dict[str, Any]:
    """Load ``path`` safely (``weights_only=True`` or safetensors) and return the top-level object."""
    label = label or str(path)
    size = path.stat().st_size
    if size == 0:
        raise ConversionError(f"checkpoint {label} is empty (0 bytes)")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ConversionError(f"checkpoint {label} is not a readable safetensors file ({err})") from err
    is_zip = head.startswith(b"PK\x03\x04")
    if is_zip and not zipfile.is_zipfile(path):
        raise ConversionError(f"checkpoint {label} is truncated or corrupt (incomplete zip archive)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/UnpicklingError/EOFError/...
        message = str(err)
        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
        if unsupported:
            raise ConversionError(
                f"checkpoint {label} pickles Python objects ({unsupported.group(1)}) that weights_only loading "
                "refuses to run; re-save it with torch.save(model.state_dict(), path)"
            ) from err
        if is_zip:
            raise ConversionError(f"checkpoint {label} is truncated or corrupt ({message.splitlines()[0]})") from err
        reason = re.search(r"WeightsUnpickler error: \s*(.+)", message)
        if head[:1] == b"\x80" and reason:  # a pickle, but not one weights_only can read safely
            raise ConversionError(
                f"checkpoint {label} is a Python pickle that weights_only loading refuses "
                f"({reason.group(1).strip()}); re-save the tensors with torch.save(state_dict, path)"
            ) from err
        if isinstance(err, EOFError) or "Ran out of input" in message or "truncated" in message.lower():
            raise ConversionError(f"checkpoint {label} is truncated (the pickle ends early)") from err
        raise ConversionError(
            f"{label} is not a PyTorch or safetensors checkpoint (neither a torch.save zip archive, a pickle "
            "nor a safetensors file)"
        ) from err
    if not isinstance(obj, Mapping):
        raise ConversionError(f"checkpoint {label} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")  # scalars in OpenAI-format state dicts
_IGNORED_BUFFERS = ("attn_mask",)  # non-weight buffer some old exports kept; rebuilt by every implementation


def normalize_state_dict(checkpoint: Mapping[str, Any], label: str = "checkpoint") -> tuple[dict, str]:
    """Unwrap and rename any supported layout to open_clip ``CLIP.state_dict()`` keys.

    Returns the state dict and a short description of the layout that was found.
    """
    layout = "open_clip state dict"
    state = checkpoint
    for wrapper in ("state_dict", "model"):
        inner = state.get(wrapper) if isinstance(state, Mapping) else None
        if isinstance(inner, Mapping) and not isinstance(inner, torch.Tensor):
            state, layout = inner, f"training checkpoint ({wrapper!r})"
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConversionError(f"{label} holds no tensors (keys: {', '.join(list(map(str, state))[:5])})")
    out: dict[str, torch.Tensor] = {}
    seen_itra = False
    for key, value in tensors.items():
        new = key
        for prefix in ("module.", "_orig_mod."):
            while new.startswith(prefix):
                new = new[len(prefix):]
        if new.startswith("text_backbone."):
            new, seen_itra = new[len("text_backbone."):], True
        elif new.startswith("image_backbone."):
            new, seen_itra = "visual." + new[len("image_backbone."):], True
        elif new.startswith("text.") and not new.startswith("text_projection"):
            new = new[len("text."):]  # open_clip CustomTextCLIP layout
        if new in out:
            raise ConversionError(f"{label}: two checkpoint keys map to {new!r} (second one: {key!r})")
        out[new] = value
    if seen_itra:
        layout += " with ITRA text_backbone/image_backbone prefixes"
    if "logit_scale" in out and out["logit_scale"].numel() == 1:
        out["logit_scale"] = out["logit_scale"].reshape(())
    return out, layout


def validate_state_dict(state: Mapping[str, torch.Tensor], spec: ArchSpec, label: str = "checkpoint") -> None:
    """Check keys and shapes strictly against ``spec``; the first problem raises a ConversionError naming the key."""
    expected = spec.expected_shapes()
    for key in _METADATA_KEYS:
        if key in state:
            want = {"input_resolution": spec.image_size, "context_length": spec.context_length,
                    "vocab_size": spec.vocab_size}[key]
            if int(state[key]) != want:
                raise ConversionError(f"{label}: {key} is {int(state[key])}, --arch {spec.name} expects {want}")
    extra = [k for k in state if k not in expected and k not in _METADATA_KEYS and k not in _IGNORED_BUFFERS]
    missing = [k for k in expected if k not in state]
    hint = _arch_hint(state, spec)
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != shape:
            raise ConversionError(
                f"{label}: key {key!r} has shape {tuple(state[key].shape)}, --arch {spec.name} expects {shape}{hint}"
            )
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ConversionError(f"{label}: unexpected key {extra[0]!r}{more} for --arch {spec.name}{hint}")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(f"{label}: missing key {missing[0]!r}{more} for --arch {spec.name}{hint}")
    for key in expected:
        if not state[key].is_floating_point():
            raise ConversionError(f"{label}: key {key!r} holds {state[key].dtype} values, expected floating point")


def _arch_hint(state: Mapping[str, torch.Tensor], spec: ArchSpec) -> str:
    """'; the weights fit ViT-L-14 / ViT-L-14-quickgelu' when another table entry matches every shape."""
    fits = []
    for name, other in ARCHS.items():
        if other == spec:
            continue
        shapes = other.expected_shapes()
        keys = [k for k in state if k not in _METADATA_KEYS and k not in _IGNORED_BUFFERS]
        if set(keys) == set(shapes) and all(tuple(state[k].shape) == shapes[k] for k in shapes):
            fits.append(name)
    return f"; the weights fit {' / '.join(fits)}" if fits else ""


# ----------------------------------------------------------------------------------------------- conversion
# (open_clip key, CLIPModel key, op) rows; op says how the tensor changes on the way: "" copied as is, "T"
# transposed (open_clip computes x @ proj with proj (width, embed); nn.Linear stores (embed, width)), "q"/"k"/"v"
# that third of nn.MultiheadAttention's packed in_proj ([q; k; v] along dim 0).
_TOP_LEVEL_KEYS = (
    ("logit_scale", "logit_scale", ""),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight", ""),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight", ""),
    ("ln_final.weight", "text_model.final_layer_norm.weight", ""),
    ("ln_final.bias", "text_model.final_layer_norm.bias", ""),
    ("text_projection", "text_projection.weight", "T"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding", ""),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", ""),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", ""),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight", ""),
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias", ""),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight", ""),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias", ""),
    ("visual.proj", "visual_projection.weight", "T"),
)
_BLOCK_KEYS = tuple(
    [(f"attn.in_proj_{kind}", f"self_attn.{part}_proj.{kind}", part) for kind in ("weight", "bias") for part in "qkv"]
    + [(f"{old}.{kind}", f"{new}.{kind}", "") for old, new in (
        ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
        ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"),
    ) for kind in ("weight", "bias")]
)
_OPS = {
    "": lambda t: t, "T": lambda t: t.t(),
    "q": lambda t: t.chunk(3, dim=0)[0], "k": lambda t: t.chunk(3, dim=0)[1], "v": lambda t: t.chunk(3, dim=0)[2],
}


def create_rename_keys(spec: ArchSpec) -> list[tuple[str, str, str]]:
    """The whole open_clip -> CLIPModel key mapping for ``spec`` as one table of (source, target, op) rows."""
    rows = list(_TOP_LEVEL_KEYS)
    for src_prefix, dst_prefix, layers in (
        ("transformer.resblocks", "text_model.encoder.layers", spec.text_layers),
        ("visual.transformer.resblocks", "vision_model.encoder.layers", spec.vision_layers),
    ):
        rows += [(f"{src_prefix}.{i}.{src}", f"{dst_prefix}.{i}.{dst}", op)
                 for i in range(layers) for src, dst, op in _BLOCK_KEYS]
    return rows


def to_hf_state_dict(state: Mapping[str, torch.Tensor], spec: ArchSpec) -> dict[str, torch.Tensor]:
    """Map open_clip keys to ``CLIPModel`` keys (float32) by :func:`create_rename_keys`."""
    return {dst: _OPS[op](state[src].detach().to(torch.float32)).contiguous().clone()
            for src, dst, op in create_rename_keys(spec)}


def build_model(state: Mapping[str, torch.Tensor], spec: ArchSpec):
    """A ``GeoRSCLIPModel`` holding the converted weights (loaded strictly, no random init)."""
    from accelerate import init_empty_weights

    from .modeling import GeoRSCLIPModel

    hf_state = to_hf_state_dict(state, spec)
    config = spec.clip_config(float(hf_state["logit_scale"]))
    with init_empty_weights(include_buffers=False):
        model = GeoRSCLIPModel(config)
    result = model.load_state_dict(hf_state, strict=False, assign=True)
    problems = list(result.missing_keys) + list(result.unexpected_keys)
    if problems:  # a bug in the mapping, not in the user's input
        raise RuntimeError(f"internal key mapping error for {spec.name}: {problems[:3]}")
    return model.eval()


# -------------------------------------------------------------------------------------------- parity check
def _parity_pixels(spec: ArchSpec, n: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, spec.image_size, spec.image_size, generator=generator)


@torch.no_grad()
def hf_reference_outputs(model, processor, spec: ArchSpec) -> dict[str, torch.Tensor]:
    """Normalised image/text embeddings of the converted model on the fixed parity inputs."""
    pixels = _parity_pixels(spec)
    return {
        "image": model.image_embeddings(pixels),
        "text": model.text_embeddings(list(PARITY_CAPTIONS), processor),
        "logit_scale": model.logit_scale.detach().float().cpu().clone(),
    }


def open_clip_model_config(spec: ArchSpec) -> dict[str, Any]:
    """open_clip's own config for a named arch (independent of our table), else the spec's config."""
    import open_clip

    cfg = open_clip.get_model_config(spec.name) if spec.name in ARCHS else None
    return dict(cfg) if cfg else spec.open_clip_config()


@torch.no_grad()
def open_clip_parity(state: Mapping[str, torch.Tensor], spec: ArchSpec, reference: Mapping[str, torch.Tensor]):
    """Compare ``reference`` (from the converted model) with open_clip on the same weights and inputs.

    Returns a dict of max absolute differences, or ``None`` when open_clip is not installed.
    """
    try:
        import open_clip
        from open_clip.model import CLIP
    except ImportError:
        return None
    model = CLIP(**open_clip_model_config(spec)).eval()
    weights = {k: v.to(torch.float32) for k, v in state.items() if k not in _METADATA_KEYS + _IGNORED_BUFFERS}
    model.load_state_dict(weights, strict=True)
    image = F.normalize(model.encode_image(_parity_pixels(spec)), dim=-1)
    tokens = open_clip.tokenize(list(PARITY_CAPTIONS), context_length=spec.context_length)
    text = F.normalize(model.encode_text(tokens), dim=-1)
    return {
        "image_embeds_max_abs_diff": float((image - reference["image"]).abs().max()),
        "text_embeds_max_abs_diff": float((text - reference["text"]).abs().max()),
        "logit_scale_abs_diff": float((model.logit_scale.float() - reference["logit_scale"]).abs()),
        "open_clip_version": open_clip.__version__,
        "tolerance": PARITY_TOLERANCE,
    }


# -------------------------------------------------------------------------------------------------- driver
@dataclass
class ConversionResult:
    output: Path
    arch: str
    layout: str
    sha256: str
    parity: dict[str, Any] | None


def convert(
    checkpoint: str,
    arch: str,
    output: str | os.PathLike,
    *,
    skip_parity: bool = False,
    force_arch: bool = False,
    overwrite: bool = False,
    model_name: str | None = None,
    license: str | None = None,
    cache_dir: str | None = None,
) -> ConversionResult:
    """Convert ``checkpoint`` for ``arch`` into the transformers CLIP folder ``output`` (atomically)."""
    from . import __version__
    from .io import atomic_dir
    from .processing import GeoRSCLIPProcessor

    spec = resolve_arch(arch)
    known = known_checkpoint(checkpoint)
    if known and known.arch != spec.name and not force_arch:
        raise ConversionError(
            f"{checkpoint} is {known.model}, initialised from {known.initialised_from}: use --arch {known.arch} "
            f"(or pass --force-arch to convert it as {spec.name})"
        )
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConversionError(f"output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConversionError(f"output folder {output} is not empty; pass --overwrite to replace it")

    path = fetch_checkpoint(checkpoint, cache_dir=cache_dir)
    logger.info("reading %s", path)
    state, layout = normalize_state_dict(read_checkpoint(path, checkpoint), checkpoint)
    validate_state_dict(state, spec, checkpoint)
    digest = sha256_file(path)
    logger.info("layout: %s; %d tensors match %s (%s)", layout, len(state), spec.name, spec.activation)

    model = build_model(state, spec)
    processor = GeoRSCLIPProcessor.default(image_size=spec.image_size)
    name = model_name or (known.model if known else output.name)
    with atomic_dir(output) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        parity = None
        if not skip_parity:
            reference = hf_reference_outputs(model, processor, spec)
            del model  # free memory before open_clip builds its copy
            parity = open_clip_parity(state, spec, reference)
            if parity is None:
                logger.warning("open_clip is not installed: parity check skipped (pip install open_clip_torch)")
            else:
                worst = max(parity["image_embeds_max_abs_diff"], parity["text_embeds_max_abs_diff"])
                if worst > PARITY_TOLERANCE or parity["logit_scale_abs_diff"] != 0.0:
                    raise ConversionError(
                        f"parity check failed for {checkpoint} as {spec.name}: image diff "
                        f"{parity['image_embeds_max_abs_diff']:.2e}, text diff {parity['text_embeds_max_abs_diff']:.2e}, "
                        f"logit scale diff {parity['logit_scale_abs_diff']:.2e} (tolerance {PARITY_TOLERANCE:g}); "
                        "nothing written"
                    )
        provenance = {
            "source_checkpoint": checkpoint,
            "sha256": digest,
            "arch": spec.name,
            "activation": spec.activation,
            "checkpoint_layout": layout,
            "converter": f"modeling_georsclip.convert (georsclip {__version__})",
            "parity": parity if parity is not None else ("skipped (--skip-parity)" if skip_parity
                                                           else "skipped (open_clip not installed)"),
        }
        description = (
            f"{name} converted from the open_clip checkpoint `{checkpoint}` to a plain transformers CLIP "
            f"checkpoint (`--arch {spec.name}`, {spec.activation} activation)."
        )
        if known:
            description += f" Initialised from {known.initialised_from} before remote-sensing training."
        write_model_card(tmp, model_name=name, base_model=known.base_model if known else None,
                         license=license or (known.license if known else "other"), provenance=provenance,
                         description=description)
        (tmp / "conversion.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n", encoding="utf-8")
    return ConversionResult(output=output, arch=spec.name, layout=layout, sha256=digest, parity=parity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_georsclip.convert",
        description="Convert an open_clip checkpoint (GeoRSCLIP, RemoteCLIP, SkyCLIP) to a transformers CLIP folder.",
    )
    parser.add_argument("--checkpoint", required=True, help="local .pt/.bin/.safetensors file or hf://OWNER/REPO/path")
    parser.add_argument("--arch", required=True, help=f"open_clip model name ({', '.join(ARCHS)}) or config .json")
    parser.add_argument("--output", required=True, help="folder to write (created atomically)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub model repo")
    parser.add_argument("--skip-parity", action="store_true", help="skip the final comparison with open_clip")
    parser.add_argument("--force-arch", action="store_true",
                        help="convert a known checkpoint with an arch other than the one it was trained with")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--model-name", help="name for the model card (default: known model or folder name)")
    parser.add_argument("--license", help="license for the model card (default: upstream's, else 'other')")
    parser.add_argument("--cache-dir", help="huggingface_hub cache folder for hf:// downloads")
    return parser


def _fail(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point; any input problem is one ``error:`` line on stderr and exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        result = convert(
            args.checkpoint, args.arch, args.output, skip_parity=args.skip_parity, force_arch=args.force_arch,
            overwrite=args.overwrite, model_name=args.model_name, license=args.license, cache_dir=args.cache_dir,
        )
    except ConversionError as err:
        _fail(str(err))
    except OSError as err:  # unwritable output, full disk, ...
        _fail(f"{err.strerror or err}: {err.filename}" if err.filename else str(err))
    summary = {"output": str(result.output), "arch": result.arch, "layout": result.layout,
               "sha256": result.sha256, "parity": result.parity or "skipped"}
    print(json.dumps(summary, indent=2))
    if args.push_to_hub:
        from .hub import push_folder

        try:
            push_folder(result.output, args.push_to_hub, commit_message=f"Add {result.arch} converted with georsclip")
        except Exception as err:  # noqa: BLE001 - PushError, network and auth errors alike
            _fail(f"converted to {result.output} but the upload to {args.push_to_hub} failed: {err}")


if __name__ == "__main__":
    main()


__all__ = [
    "ARCHS", "ArchSpec", "ConversionError", "ConversionResult", "KNOWN_CHECKPOINTS", "KnownCheckpoint",
    "build_model", "convert", "fetch_checkpoint", "main", "normalize_state_dict", "open_clip_parity",
    "parse_hf_url", "read_checkpoint", "resolve_arch", "to_hf_state_dict", "validate_state_dict",
]
