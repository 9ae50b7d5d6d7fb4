"""A Gradio demo of a GeoRSCLIP checkpoint: zero-shot classification, text localization and gallery search.

    pip install "georsclip[demo]"
    python -m modeling_georsclip.demo --model GeoRSCLIP-ViT-B-32 [--gallery DIR] [--port 7860] [--precision auto]

Each tab is also an API endpoint (``/classify``, ``/localize``, ``/search``) callable with ``gradio_client``::

    Client("http://127.0.0.1:7860").predict(handle_file("tile.jpg"), "airport, farmland", api_name="/classify")

The same app is the Hub Space (``spaces/georsclip-demo/app.py`` and the main job's ``OUT/space/`` call
``space_app``). Bad input (not an image, no labels, an empty query, an oversized upload) ends in one readable
message in the page and an error from the API; the server keeps serving.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .log import get_logger

logger = get_logger(__name__)

INSTALL_HINT = 'pip install "georsclip[demo]"'
MAX_LABELS = 64
MAX_QUERY_CHARS = 300
DEFAULT_MAX_FILE_SIZE = "50mb"
MAX_SCENE_PIXELS = 4096 * 4096  # ~1 min of SeLo windows for a ViT-B on a CPU; bigger scenes: the CLI
MIN_SCENE_SIDE = 64
KEEP_REQUESTS = 16
MAX_CACHED_LABELS = 1024
SCENE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
EXAMPLE_LABELS = "airport, farmland, forest, harbor, residential area, stadium, river, desert"


class DemoInputError(ValueError):
    """Input the user can fix (shown in the page as is, returned by the API as the error message)."""


def parse_labels(text: str | None) -> list[str]:
    """Comma-separated labels, stripped, empties and repeats dropped (order kept)."""
    labels = list(dict.fromkeys(part.strip() for part in (text or "").split(",") if part.strip()))
    if not labels:
        raise DemoInputError("Enter at least one label, separated by commas (e.g. airport, farmland, forest).")
    if len(labels) > MAX_LABELS:
        raise DemoInputError(f"Too many labels ({len(labels)}); use at most {MAX_LABELS}.")
    return labels


def check_query(text: str | None) -> str:
    """A non-empty text query of reasonable length."""
    query = (text or "").strip()
    if not query:
        raise DemoInputError("Enter a text query (e.g. 'a harbor with many boats').")
    if len(query) > MAX_QUERY_CHARS:
        raise DemoInputError(f"The query is {len(query)} characters long; use at most {MAX_QUERY_CHARS}.")
    return query


def demo_window_sizes(height: int, width: int, name: str) -> list[int]:
    """SeLo's window sizes that fit the scene; for a scene smaller than 256 px, half and all of its short side."""
    from .evaluation.selo import WINDOW_SIZES

    short = min(height, width)
    if height * width > MAX_SCENE_PIXELS:
        raise DemoInputError(
            f"{name} is {width} x {height} px; the demo localizes scenes up to {MAX_SCENE_PIXELS / 1e6:.0f} "
            "megapixels. Run `python -m modeling_georsclip.localize` for bigger ones.")
    if short < MIN_SCENE_SIDE:
        raise DemoInputError(f"{name} is {width} x {height} px; a scene needs at least {MIN_SCENE_SIDE} px a side.")
    return [s for s in WINDOW_SIZES if s <= short] or [short // 2, short]


def _reason(err: BaseException, path: Path) -> str:
    """One line of ``err`` for the page: no server paths, no object reprs, no repeated file name."""
    text = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
    text = re.sub(r" ?<[\w.]+ object at 0x[0-9a-f]+>", "", text.replace(str(path), path.name))
    return re.sub(rf"^cannot read image {re.escape(path.name)}: ", "", text).rstrip(".")


def _upload_path(value: Any, what: str) -> Path:
    """The local path of an uploaded file (Gradio passes a path string; the API may pass a dict)."""
    if isinstance(value, dict):
        value = value.get("path")
    if not value:
        raise DemoInputError(f"Upload {what} first.")
    return Path(value)


class DemoBackend:
    """What the three tabs compute, without Gradio: plain arguments in, Python values out, DemoInputError."""

    def __init__(self, model, processor, gallery: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None):
        from .resources import samples_dir

        self.model, self.processor = model, processor
        self.gallery_dir = Path(gallery) if gallery else samples_dir() / "images"
        self.cache_dir = cache_dir
        self._heads: OrderedDict[str, torch.Tensor] = OrderedDict()  # label -> head column
        self._lock = threading.Lock()
        self._index = None
        self._work: Path | None = None

    # ------------------------------------------------------------------ classify
    def head(self, labels: Sequence[str]) -> torch.Tensor:
        """The ``paper`` zero-shot head (D, C) of ``labels`` with the RS template ensemble.

        Each column depends on its label alone, so columns are cached per label: a new label set only embeds
        its new labels (105 prompts each; ~4 s a label for a ViT-B/32 on two CPU cores).
        """
        from .evaluation.templates import RS_TEMPLATES

        with self._lock:
            missing = [label for label in labels if label not in self._heads]
        if missing:
            columns = self.model.zero_shot_head(missing, RS_TEMPLATES, self.processor, mode="paper")
            with self._lock:
                self._heads.update(zip(missing, columns.T, strict=True))
        with self._lock:
            head = torch.stack([self._heads[label] for label in labels], dim=1)
            for label in labels:
                self._heads.move_to_end(label)
            while len(self._heads) > MAX_CACHED_LABELS:
                self._heads.popitem(last=False)
        return head

    def pixels(self, path: Path) -> torch.Tensor:
        """(1, 3, H, W) model input of an image or raster file; DemoInputError when it is not one."""
        try:
            return self.processor(images=str(path), return_tensors="pt")["pixel_values"]
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DemoInputError(f"{path.name} is not an image this demo can read ({_reason(err, path)}).") from err

    def classify(self, image: Any, labels_text: str) -> dict[str, float]:
        """Label -> probability (softmax over the given labels)."""
        labels = parse_labels(labels_text)
        pixels = self.pixels(_upload_path(image, "an image"))
        embeds = self.model.image_embeddings(pixels)
        probs = self.model.zero_shot_logits(embeds, self.head(labels)).softmax(dim=-1)[0]
        return {label: float(p) for label, p in zip(labels, probs, strict=True)}

    # ------------------------------------------------------------------ localize
    def localize(self, scene: Any, query_text: str) -> tuple[Image.Image, str, list[str]]:
        """The SeLo heat-map overlay of ``query`` on ``scene``, a summary, and the GeoTIFF + GeoJSON it wrote.

        The work is ``localize.localize_to_folder`` (the CLI's code path); the demo only picks window sizes
        that fit the scene and refuses scenes too big to answer interactively.
        """
        from .geo import as_scene
        from .localize import localize_to_folder

        query = check_query(query_text)
        path = _upload_path(scene, "a scene (PNG, JPEG or GeoTIFF)")
        if path.suffix.lower() not in SCENE_SUFFIXES:
            raise DemoInputError(f"{path.name}: upload a PNG, JPEG or GeoTIFF scene ({', '.join(SCENE_SUFFIXES)}).")
        out = self._request_dir()
        try:
            with as_scene(path) as opened:
                sizes = demo_window_sizes(opened.height, opened.width, path.name)
                summary = localize_to_folder(self.model, self.processor, opened, [query], out, sizes, progress=False)[0]
                crs = opened.crs.to_string() if opened.crs else None
                width, height = opened.width, opened.height
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DemoInputError(f"Cannot localize in {path.name}: {_reason(err, path)}.") from err
        files = {Path(name).suffix: out / name for name in summary["files"]}
        overlay = Image.open(files[".png"]).convert("RGB")
        regions = json.loads(files[".geojson"].read_text())["features"]
        lines = [f"**{query}** in `{path.name}` ({width} x {height} px, "
                 f"{'CRS ' + crs if crs else 'no CRS: pixel coordinates'}); windows {', '.join(map(str, sizes))} px.",
                 f"Best window cosine {summary['best_window_score']:.3f}; {len(regions)} top region(s)."]
        if regions:
            best = regions[0]["properties"]
            lines.append(f"Region 1: mean probability {best['score']:.2f}, {best['pixels']} px.")
        return overlay, "\n\n".join(lines), [str(files[".tif"]), str(files[".geojson"])]

    def _request_dir(self) -> Path:
        """A fresh folder for one request's outputs; only the newest few are kept (Gradio copies what it shows)."""
        with self._lock:
            self._work = self._work or Path(tempfile.mkdtemp(prefix="georsclip-demo-"))
            folders = sorted(self._work.iterdir(), key=lambda p: p.stat().st_mtime)
            for old in folders[: max(0, len(folders) - KEEP_REQUESTS)]:
                shutil.rmtree(old, ignore_errors=True)
            return Path(tempfile.mkdtemp(prefix="localize-", dir=self._work))

    # ------------------------------------------------------------------ search
    @property
    def index(self):
        from .gallery import GalleryIndex

        with self._lock:
            if self._index is None:
                self._index = GalleryIndex(self.gallery_dir, self.model, self.processor, cache_dir=self.cache_dir)
            return self._index

    def search(self, query_text: str, k: int = 6) -> list[tuple[Path, float]]:
        """The ``k`` gallery images closest to the query, best first."""
        query = check_query(query_text)
        return self.index.search(query, k=int(k))


def _thumbnail(path: Path, size: int = 256) -> Image.Image:
    """A browser-viewable RGB thumbnail (TIFFs and 16-bit rasters included), cached per file version."""
    stat = path.stat()
    return _cached_thumbnail(str(path.resolve()), stat.st_size, stat.st_mtime_ns, size)


@functools.lru_cache(maxsize=256)
def _cached_thumbnail(path: str, _size_bytes: int, _mtime_ns: int, size: int) -> Image.Image:
    from .imaging import load_image

    image = load_image(path)
    image.thumbnail((size, size))
    return image


def build_app(model, processor, gallery: str | os.PathLike | None = None, *,
              cache_dir: str | os.PathLike | None = None, title: str = "GeoRSCLIP demo"):
    """The Gradio Blocks app with the classify / localize / search tabs (and API endpoints of those names)."""
    import gradio as gr

    backend = DemoBackend(model, processor, gallery, cache_dir)

    def guarded(fn):
        """Turn DemoInputError into gr.Error (shown in the page, raised by the API); log anything else."""
        def run(*args):
            try:
                return fn(*args)
            except DemoInputError as err:
                raise gr.Error(str(err), print_exception=False) from err
            except gr.Error:
                raise
            except Exception as err:  # noqa: BLE001 - the page shows one line, the log keeps the traceback
                logger.exception("demo request failed")
                raise gr.Error(f"Internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                               print_exception=False) from err
        run.__name__ = fn.__name__
        return run

    def do_search(query: str, k: float):
        hits = backend.search(query, int(k))
        gallery_items = [(_thumbnail(path), f"{path.name} · {score:.3f}") for path, score in hits]
        table = [[rank, path.name, round(score, 4)] for rank, (path, score) in enumerate(hits, 1)]
        return gallery_items, table

    def preview(upload):
        """A thumbnail of the uploaded file, or nothing when it is not a readable image (classify says why)."""
        try:
            return _thumbnail(_upload_path(upload, "an image"), 448)
        except (DemoInputError, OSError, ValueError, Image.DecompressionBombError):
            return None

    from .resources import samples_dir

    samples = samples_dir() / "images"  # examples always come from the vendored samples
    name = getattr(model.config, "_name_or_path", "") or "model"
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nModel: `{Path(name).name if os.path.isabs(name) else name}` · "
                    "zero-shot classification, text localization and text-to-image search for remote sensing.")
        with gr.Tab("Classify", id="classify"):
            with gr.Row():
                with gr.Column():
                    # gr.File, not gr.Image: gr.Image decodes uploads before the handler runs, so a file that
                    # is not an image would end in Gradio's generic "Error" instead of our message.
                    c_image = gr.File(label="Image (PNG, JPEG or GeoTIFF)", file_types=list(SCENE_SUFFIXES),
                                      elem_id="classify-image")
                    c_labels = gr.Textbox(label="Labels (comma-separated)", value=EXAMPLE_LABELS,
                                          elem_id="classify-labels")
                    c_button = gr.Button("Classify", variant="primary", elem_id="classify-button")
                with gr.Column():
                    c_out = gr.Label(num_top_classes=5, label="Probabilities", elem_id="classify-output")
                    c_preview = gr.Image(label="Preview", interactive=False, height=224, elem_id="classify-preview")
            c_button.click(guarded(backend.classify), [c_image, c_labels], c_out, api_name="classify")
            c_image.change(preview, c_image, c_preview, api_visibility="private")
            gr.Examples([[str(samples / n), EXAMPLE_LABELS] for n in ("remoteclip__airport.jpg", "cliprsicd__stadium_1.jpg")
                         if (samples / n).is_file()], [c_image, c_labels], cache_examples=False)
        with gr.Tab("Localize", id="localize"):
            with gr.Row():
                with gr.Column():
                    l_scene = gr.File(label="Scene (PNG, JPEG or GeoTIFF)", file_types=list(SCENE_SUFFIXES),
                                      elem_id="localize-scene")
                    l_query = gr.Textbox(label="Query", value="airplanes", elem_id="localize-query")
                    l_button = gr.Button("Localize", variant="primary", elem_id="localize-button")
                with gr.Column():
                    l_out = gr.Image(type="pil", label="Heat map", elem_id="localize-output", format="png")
                    l_info = gr.Markdown(elem_id="localize-info")
                    l_files = gr.File(label="Probability GeoTIFF and top regions GeoJSON", file_count="multiple",
                                      elem_id="localize-files")
            l_button.click(guarded(backend.localize), [l_scene, l_query], [l_out, l_info, l_files],
                           api_name="localize")
            gr.Examples([[str(samples / n), q] for n, q in (
                ("mmrotate__demo.jpg", "airplanes"), ("sahi__boats.jpg", "boats in the harbor"),
                ("riotiler__201404_13SED190110_201404_0x1500m_CL_1.tif", "a road"))
                         if (samples / n).is_file()], [l_scene, l_query], cache_examples=False)
        with gr.Tab("Search", id="search"):
            with gr.Row():
                s_query = gr.Textbox(label="Query", value="an airport with airplanes", elem_id="search-query", scale=4)
                s_k = gr.Slider(1, 24, value=6, step=1, label="Top k", elem_id="search-k", scale=1)
                s_button = gr.Button("Search", variant="primary", elem_id="search-button", scale=1)
            s_gallery = gr.Gallery(label=f"Gallery: {backend.gallery_dir.name}/", columns=6, height=340,
                                   elem_id="search-gallery")
            s_table = gr.Dataframe(headers=["rank", "file", "score"], label="Scores", elem_id="search-table")
            s_button.click(guarded(do_search), [s_query, s_k], [s_gallery, s_table], api_name="search")
            gr.Examples([["an airport with airplanes"], ["a stadium"], ["houses surrounded by trees"]], [s_query],
                        cache_examples=False)
    app.backend = backend
    return app


def launch(app, host: str | None = None, port: int | None = None,
           max_file_size: str | int = DEFAULT_MAX_FILE_SIZE, **kwargs):
    """Serve ``app`` with the upload limit and the sample folder allowed (so examples load).

    ``host``/``port`` None: Gradio's defaults (``GRADIO_SERVER_NAME``/``_PORT``, which a Space sets).
    """
    from .resources import samples_dir

    return app.launch(server_name=host, server_port=port, max_file_size=max_file_size,
                      allowed_paths=[str(samples_dir())], **kwargs)


def space_app(app_file: str | os.PathLike, precision: str = "auto"):
    """The app of a Space folder: the model its README names (or ``$GEORSCLIP_MODEL``), the vendored gallery."""
    from .inference import load_model
    from .space import space_model

    model, processor = load_model(space_model(Path(app_file).resolve().parent),
                                  device="cuda" if torch.cuda.is_available() else "cpu", precision=precision)
    return build_app(model, processor)


def build_parser() -> argparse.ArgumentParser:
    from .inference import add_precision_argument

    parser = argparse.ArgumentParser(prog="python -m modeling_georsclip.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="converted model folder or Hub id")
    parser.add_argument("--gallery", type=Path, help="image folder for the search tab (default: the vendored samples)")
    parser.add_argument("--cache-dir", type=Path, help="gallery embedding cache (default: ~/.cache/georsclip/gallery)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help="largest upload, e.g. 50mb")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_precision_argument(parser, "auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"error: the demo needs Gradio, which is not installed; run: {INSTALL_HINT}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    from .inference import ModelLoadError, PrecisionError, load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, processor = load_model(args.model, device=device, precision=args.precision)
    except (ModelLoadError, PrecisionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.gallery is not None and not args.gallery.is_dir():
        print(f"error: gallery folder not found: {args.gallery}", file=sys.stderr)
        return 1
    app = build_app(model, processor, args.gallery, cache_dir=args.cache_dir)
    launch(app, host=args.host, port=args.port, max_file_size=args.max_file_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
