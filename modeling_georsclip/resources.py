"""Package data: card templates, training recipes, open_clip arch configs and the vendored samples.

Everything the library reads at run time ships inside the package, so every verb works from an installed
wheel exactly as from a clone. ``importlib.resources`` finds the files; wheels install as plain folders, so
the returned objects are real paths (``Path``) that can be handed to subprocesses and Jinja.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

_PACKAGE = "modeling_georsclip"


class ResourceError(FileNotFoundError):
    """A named packaged resource (recipe, template, arch) does not exist; the message lists what does."""


def package_path(*parts: str) -> Path:
    """Path of a file or folder shipped inside the package (``package_path("configs", "ret2.yaml")``)."""
    return Path(str(resources.files(_PACKAGE).joinpath(*parts)))


def card_template(name: str) -> Path:
    """A card template (``model_card.md``, ``dataset_card.md``); ``GEORSCLIP_CARD_TEMPLATES`` overrides the folder."""
    folder = os.environ.get("GEORSCLIP_CARD_TEMPLATES")
    path = Path(folder) / name if folder else package_path("cards", name)
    if not path.is_file():
        raise ResourceError(f"card template not found: {path}")
    return path


def recipe_names() -> list[str]:
    """Names of the packaged training recipes (``tiny_cpu``, ``ret2``, ``rs5m_vitb32``, ``lora``)."""
    return sorted(p.stem for p in package_path("configs").glob("*.yaml"))


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """A training recipe: an existing file path, or a packaged recipe name (with or without ``.yaml``).

    A path wins over a name, so a user's own ``ret2.yaml`` in the working folder is never shadowed.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    packaged = package_path("configs", f"{stem}.yaml")
    if len(path.parts) <= 1 or str(path).startswith("configs/") or str(path).startswith("configs" + os.sep):
        if packaged.is_file():
            return packaged
    raise ResourceError(
        f"config {str(name_or_path)!r} is neither a file nor a packaged recipe ({', '.join(recipe_names())})"
    )


def accelerate_config(name: str) -> Path:
    """A packaged accelerate config (``cpu_2proc``, ``ddp_8gpu``, ``ddp_2nodes``, ``fsdp_8gpu``) or a path."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = package_path("configs", "accelerate", f"{path.stem}.yaml")
    if not packaged.is_file():
        raise ResourceError(f"accelerate config {name!r} is neither a file nor a packaged config")
    return packaged


def samples_dir() -> Path:
    """The vendored real remote-sensing samples (images, captions, AIR-SLT annotations; see SOURCES.md)."""
    return package_path("samples", "rs-samples")


def arch_names() -> list[str]:
    """open_clip model names shipped in ``archs/`` (each ``archs/<NAME>.json``)."""
    return sorted(p.stem for p in package_path("archs").glob("*.json"))


def get_arch_config(name_or_path: str | os.PathLike) -> dict:
    """An open_clip model config: a packaged arch name (``ViT-B/32`` spelling accepted) or a ``.json`` path.

    The packaged files are open_clip's own ``src/open_clip/model_configs/*.json``, copied verbatim (the tests
    compare each with the installed open_clip), so conversion needs no open_clip at run time. Like open_clip's
    ``factory.get_model_config``; raises ResourceError for an unknown name, ValueError for an unreadable file.
    """
    text = str(name_or_path)
    if text.endswith(".json"):
        path = Path(text)
    else:
        path = package_path("archs", f"{text.replace('/', '-')}.json")
        if not path.is_file():
            raise ResourceError(f"unknown arch {text!r}; choose one of {', '.join(arch_names())}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read arch config {path}: {err}") from err
    if not isinstance(cfg, dict) or "embed_dim" not in cfg:
        raise ValueError(f"arch config {path} is not an open_clip model config (no embed_dim)")
    return cfg
def is_packaged_recipe(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the recipes shipped in the package (not a user's file)."""
    return Path(path).resolve().parent == package_path("configs").resolve()


def locate_recipe_data(source: Any) -> Any:
    """A packaged recipe's relative data paths, made to work outside a clone.

    The recipes name the vendored samples ``samples/rs-samples/...``: from a clone's root that path exists
    (``samples`` links into the package), from anywhere else it does not, so a relative path that is missing
    under the working folder but present under the package folder becomes the packaged file. Anything else
    (absolute paths, Hub ids, a user's own data) is returned unchanged. ``source`` is a path, a source mapping
    (``path`` / ``images`` keys) or a list of them.
    """
    if isinstance(source, list):
        return [locate_recipe_data(item) for item in source]
    if isinstance(source, dict):
        return {k: locate_recipe_data(v) if k in ("path", "images") else v for k, v in source.items()}
    if isinstance(source, str) and not Path(source).is_absolute() and not Path(source).exists():
        packaged = package_path(*Path(source).parts)
        if packaged.exists():
            return str(packaged)
    return source
