"""Write (and push) a Hugging Face Space that serves the demo for one model.

A Space folder is three files: ``README.md`` (Space card; its front matter says ``sdk: gradio``, ``app_file`` and
which model to serve), ``app.py`` (the same few lines for every Space: read the model from the card, build the
app of ``modeling_georsclip.demo``) and ``requirements.txt``; plus, by default, a copy of the installed
``modeling_georsclip`` package, so that the Space runs before (or without) ``georsclip`` being on PyPI: its
``requirements.txt`` then lists the package's own dependencies instead of ``georsclip[demo]``. The model is
named by Hub id, or by a folder path relative to the Space folder, never by an absolute local path (that would
point nowhere on the Hub).

    write_space("outputs/main/space", "me/GeoRSCLIP-ViT-B-32")          # a Space for a pushed model
    push_folder("outputs/main/space", "me/GeoRSCLIP-ViT-B-32-demo", repo_type="space")

Gradio is not needed to write a Space, only to run it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData

from .io import atomic_dir
from .log import get_logger

logger = get_logger(__name__)

MODEL_KEY = "georsclip_model"  # front-matter key app.py reads (``models:`` only accepts Hub ids)
DEFAULT_REQUIREMENTS = "georsclip[demo]"
DISTRIBUTION = "georsclip"
PACKAGE_DIR = Path(__file__).resolve().parent

APP_PY = '''"""GeoRSCLIP demo Space: zero-shot classification, text localization and search (modeling_georsclip.demo).

The model comes from README.md's front matter (`{key}`: a Hub id or a folder relative to this one);
the Space variable GEORSCLIP_MODEL overrides it. Run locally with `python app.py`.
"""

from modeling_georsclip.demo import launch, space_app

demo = space_app(__file__)

if __name__ == "__main__":
    launch(demo)
'''


def _gradio_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("gradio")
    except Exception:  # noqa: BLE001 - gradio not installed: leave sdk_version to the Hub's default
        return None


def model_reference(model: str | os.PathLike, space_dir: str | os.PathLike) -> str:
    """How the Space names ``model``: a Hub id unchanged; a local folder as a path relative to the Space."""
    text = str(model)
    local = Path(text)
    if local.is_absolute() or local.exists() or text.startswith("."):
        try:
            return Path(os.path.relpath(local.resolve(), Path(space_dir).resolve())).as_posix()
        except ValueError as err:  # another drive on Windows
            raise ValueError(f"model folder {text} cannot be named relative to the Space {space_dir}") from err
    return text


def is_hub_id(reference: str) -> bool:
    parts = reference.split("/")
    return len(parts) == 2 and all(parts) and not reference.startswith(".")


def space_card(reference: str, title: str, requirements: str) -> SpaceCard:
    """The Space's README.md: front matter for the Hub plus how to run and call it."""
    data = SpaceCardData(
        title=title, emoji="🛰️", colorFrom="green", colorTo="blue", sdk="gradio", sdk_version=_gradio_version(),
        app_file="app.py", pinned=False, license="mit", short_description="Remote-sensing CLIP: classify, localize, search",
        models=[reference] if is_hub_id(reference) else None, tags=["remote-sensing", "clip", "georsclip"],
        **{MODEL_KEY: reference},
    )
    where = _where(reference)
    body = f"""
# {title}

A demo of the remote-sensing CLIP model `{reference}` (a plain transformers `CLIPModel` checkpoint), served by
GeoRSCLIP's `modeling_georsclip.demo`:

- **Classify**: an image and comma-separated labels → probabilities (RS prompt-template ensemble, `paper` head).
- **Localize**: a scene (PNG, JPEG or GeoTIFF) and a text query → heat-map overlay, plus the probability map as
  GeoTIFF and the top regions as GeoJSON (in the scene's CRS when it has one).
- **Search**: a text query → the closest images of the gallery, with scores.

The model is the front-matter key `{MODEL_KEY}` (a Hub id, or a folder relative to this Space); the Space variable
`GEORSCLIP_MODEL` overrides it. Locally: `pip install -r requirements.txt && python app.py`, or
`python -m modeling_georsclip.demo --model {reference}`.{where}

Every tab is an API endpoint:

```python
from gradio_client import Client, handle_file
client = Client("OWNER/SPACE")   # or http://127.0.0.1:7860
client.predict(handle_file("tile.jpg"), "airport, farmland, forest", api_name="/classify")
client.predict(handle_file("scene.tif"), "airplanes", api_name="/localize")
client.predict("a harbor with many boats", 6, api_name="/search")
```
"""
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _where(reference: str) -> str:
    if is_hub_id(reference):
        return ""
    return (f"\n\n`{reference}` is a local folder: put the converted model there (relative to this Space) before "
            "running or pushing it, or point the Space at a Hub id.")


def write_space(
    folder: str | os.PathLike, model: str | os.PathLike, *, title: str = "GeoRSCLIP demo",
    requirements: str | None = None, vendor: bool = True,
) -> Path:
    """Write a Space folder (README.md, app.py, requirements.txt) serving ``model``; returns the folder.

    ``model`` is a Hub id or a local model folder (stored relative to ``folder``). With ``vendor`` (default)
    the installed ``modeling_georsclip`` package is copied in and ``requirements.txt`` lists its dependencies,
    so the Space builds on the Hub without a published ``georsclip``; without it, ``requirements`` (default
    ``georsclip[demo]``) is the one line. The folder is written whole or not at all.
    """
    folder = Path(folder)
    reference = model_reference(model, folder)
    if requirements is None:
        requirements = "\n".join(vendored_requirements()) if vendor else DEFAULT_REQUIREMENTS
    with atomic_dir(folder) as tmp:
        space_card(reference, title, requirements).save(tmp / "README.md")
        (tmp / "app.py").write_text(APP_PY.format(key=MODEL_KEY), encoding="utf-8")
        (tmp / "requirements.txt").write_text(
            f"# gradio itself comes from the Space's sdk_version\n{requirements}\n", encoding="utf-8")
        if vendor:
            shutil.copytree(PACKAGE_DIR, tmp / PACKAGE_DIR.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    logger.info("wrote demo Space for %s to %s%s", reference, folder, " (package vendored)" if vendor else "")
    return folder


def vendored_requirements() -> list[str]:
    """What a Space holding a copy of the package must pip-install: the distribution's core dependencies
    and its ``demo`` extra, less gradio (the Space's ``sdk_version`` provides it).

    Read from the installed distribution's metadata, so it is the pyproject's list, not a second copy of it.
    """
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise RuntimeError(f"{DISTRIBUTION} is not installed (pip install -e .): its dependencies name what a "
                           "vendored Space installs; or write the Space with vendor=False") from err
    wanted = []
    for line in declared:
        requirement, _, marker = (part.strip() for part in line.partition(";"))
        if marker and not re.fullmatch(r'extra\s*==\s*"demo"', marker):
            continue
        if re.match(r"gradio([<>=!~\s\[]|$)", requirement):
            continue
        wanted.append(requirement)
    return wanted


def space_model(space_dir: str | os.PathLike) -> str:
    """The model a Space serves: ``$GEORSCLIP_MODEL``, else its card's ``georsclip_model`` (folders resolved)."""
    override = os.environ.get("GEORSCLIP_MODEL")
    if override:
        return override
    space_dir = Path(space_dir)
    card_path = space_dir / "README.md"
    if not card_path.is_file():
        raise FileNotFoundError(f"{card_path} not found: a Space folder needs its README.md (or set GEORSCLIP_MODEL)")
    reference = SpaceCard.load(card_path).data.to_dict().get(MODEL_KEY)
    if not reference:
        raise ValueError(f"{card_path} names no model: add `{MODEL_KEY}: OWNER/NAME` to its front matter "
                         "or set GEORSCLIP_MODEL")
    local = space_dir / reference
    return str(local) if not is_hub_id(reference) or local.exists() else reference


def write_main_space(out: Path, model_dir: Path, repo: str | None, dry_run: bool) -> Path:
    """The main job's hook: ``OUT/space`` for the trained model, pushed (or listed) as ``REPO-demo``.

    With ``--push-to-hub REPO`` the Space names the model by its Hub id (that is where the Space finds it);
    without, by the folder ``../model``.
    """
    from .hub import PushError, push_folder

    space = write_space(out / "space", repo or model_dir)
    if repo:
        try:
            push_folder(space, f"{repo}-demo", repo_type="space", dry_run=dry_run,
                        commit_message="GeoRSCLIP main job: demo Space")
        except PushError as err:
            logger.warning("Space push skipped: %s", err)
    return space
