"""Text-to-image search over a folder, with the image embeddings cached on disk.

The demo's search tab (and anyone with a folder of tiles) embeds each image once per model: embeddings live in a
safetensors file per (model, folder), each row keyed by the file's resolved path, size and modification time.
A changed, added or removed file re-embeds only itself; another model (or a fine-tuned copy of the same
architecture) gets its own cache because the key hashes the model's config, projection weights and image
processor settings, not its folder name.

    index = GalleryIndex("tiles/", model, processor)
    index.search("a harbour with many boats", k=5)      # [(Path, cosine), ...] best first
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from .io import atomic_file
from .log import get_logger
from .modeling import GeoRSCLIPModel

logger = get_logger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
FileKey = tuple[str, int, int]  # resolved path, size in bytes, mtime in ns


def default_cache_dir() -> Path:
    """``$GEORSCLIP_CACHE`` or ``$XDG_CACHE_HOME/georsclip`` (``~/.cache/georsclip``), plus ``gallery``."""
    root = os.environ.get("GEORSCLIP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "georsclip"
    return Path(root) / "gallery"


def model_fingerprint(model: GeoRSCLIPModel, processor) -> str:
    """A content hash of what decides an image embedding: config, projections, precision, preprocessing.

    Hashing every weight of a ViT-H would take seconds; the projection matrices change with any fine-tune,
    and the config and processor settings cover architecture and pixels.
    """
    digest = hashlib.sha256()
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update(str(getattr(model, "inference_precision", "fp32")).encode())
    digest.update(processor.image_processor.to_json_string().encode())
    for name in ("visual_projection.weight", "text_projection.weight", "logit_scale"):
        tensor = model.state_dict()[name].detach().float().cpu().contiguous()
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:20]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly under ``folder`` (by suffix), sorted; a clear error if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"gallery folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def file_key(path: Path) -> FileKey:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


class GalleryIndex:
    """The embeddings of one folder's images under one model, refreshed from disk on every search."""

    def __init__(
        self, folder: str | os.PathLike, model: GeoRSCLIPModel, processor, cache_dir: str | os.PathLike | None = None,
        batch_size: int = 32,
    ):
        self.folder = Path(folder)
        self.model, self.processor, self.batch_size = model, processor, batch_size
        self.fingerprint = model_fingerprint(model, processor)
        folder_hash = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:16]
        self.cache_path = Path(cache_dir or default_cache_dir()) / self.fingerprint / f"{folder_hash}.safetensors"
        self.skipped: dict[str, str] = {}  # file name -> why it could not be embedded
        self._rows: dict[FileKey, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._load_cache()

    # ------------------------------------------------------------------ cache file
    def _load_cache(self) -> None:
        if not self.cache_path.is_file():
            return
        try:
            with safe_open(str(self.cache_path), framework="pt") as handle:
                keys = json.loads(handle.metadata()["files"])
                matrix = handle.get_tensor("embeddings")
            self._rows = {tuple(k): row for k, row in zip(keys, matrix, strict=True)}
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:  # a damaged cache is rebuilt
            logger.warning("ignoring unreadable gallery cache %s (%s)", self.cache_path, err)
            self._rows = {}

    def _save_cache(self) -> None:
        keys = list(self._rows)
        matrix = torch.stack([self._rows[k] for k in keys]) if keys else torch.empty(0, self.model.config.projection_dim)
        payload = save_safetensors({"embeddings": matrix.contiguous()}, metadata={"files": json.dumps(keys)})
        with atomic_file(self.cache_path, "wb") as handle:
            handle.write(payload)

    # ------------------------------------------------------------------ embeddings
    def refresh(self) -> tuple[list[Path], torch.Tensor]:
        """(files, (N, D) unit embeddings) of the folder now; embeds only files not cached under their key."""
        with self._lock:
            files = list_images(self.folder)
            keys = [file_key(p) for p in files]
            missing = [(p, k) for p, k in zip(files, keys, strict=True) if k not in self._rows]
            for start in range(0, len(missing), self.batch_size):
                self._embed(missing[start : start + self.batch_size])
            wanted = set(keys)
            stale = [k for k in self._rows if k not in wanted]  # removed or changed files
            for key in stale:
                del self._rows[key]
            if missing or stale:
                self._save_cache()
            kept = [(p, k) for p, k in zip(files, keys, strict=True) if k in self._rows]
            if not kept:
                return [], torch.empty(0, self.model.config.projection_dim)
            return [p for p, _ in kept], torch.stack([self._rows[k] for _, k in kept])

    def _embed(self, batch: Sequence[tuple[Path, FileKey]]) -> None:
        """Embed readable files of ``batch``; unreadable ones are skipped, counted and logged, never fatal."""
        images, keys = [], []
        for path, key in batch:
            try:
                images.append(self.processor(images=str(path), return_tensors="pt")["pixel_values"][0])
                keys.append(key)
                self.skipped.pop(path.name, None)
            except (OSError, ValueError) as err:
                self.skipped[path.name] = str(err).splitlines()[0]
                logger.warning("gallery: skipping %s (%s)", path, self.skipped[path.name])
        if images:
            feats = self.model.image_embeddings(torch.stack(images), batch_size=self.batch_size)
            self._rows.update(zip(keys, feats, strict=True))

    def search(self, query: str, k: int = 5) -> list[tuple[Path, float]]:
        """The ``k`` files most similar to ``query`` (cosine of unit embeddings), best first."""
        files, feats = self.refresh()
        if not files:
            return []
        text = self.model.text_embeddings([query], self.processor)
        scores = (feats @ text[0]).tolist()
        order = sorted(range(len(files)), key=lambda i: -scores[i])[: max(1, k)]
        return [(files[i], float(scores[i])) for i in order]
