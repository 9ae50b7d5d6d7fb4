"""Demo latency: classify / localize / search through the served app (gradio_client), tiny and ViT-B-32-sized.

    PYTHONPATH=. python benchmarks/demo_latency.py [--sizes tiny,vitb32] [--reps 3] [--threads 2]

Each model (random weights: ``testing.save_tiny_clip`` and a ``CLIPConfig()`` = ViT-B/32-sized model, saved to a
temporary folder and loaded with ``inference.load_model``) is served by ``demo.build_app`` on 127.0.0.1 and
called with ``gradio_client``. Per endpoint: the first (cold) call, the median warm call, and the same call
straight on ``DemoBackend`` in this process (the baseline: model work without HTTP, upload and Gradio), with the
ratio served / direct. Cold means: classify builds the label set's prompt-ensemble head, search embeds the
gallery (34 vendored samples) into an empty cache; "search (disk cache)" is a new app reading that cache.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

LABELS = "airport, farmland, forest, harbor, residential area"
LABELS_COLD = "stadium, river, desert, bridge, parking lot"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def save_models(root: Path, sizes: list[str]) -> dict[str, Path]:
    from transformers import CLIPConfig

    from modeling_georsclip.modeling import GeoRSCLIPModel
    from modeling_georsclip.processing import GeoRSCLIPProcessor
    from modeling_georsclip.testing import save_tiny_clip

    folders = {}
    if "tiny" in sizes:
        folders["tiny"] = save_tiny_clip(root / "tiny", image_size=32)
    if "vitb32" in sizes:
        torch.manual_seed(0)
        GeoRSCLIPModel(CLIPConfig()).eval().save_pretrained(root / "vitb32")  # ViT-B/32 is CLIPConfig's default
        GeoRSCLIPProcessor.default(image_size=224).save_pretrained(root / "vitb32")
        folders["vitb32"] = root / "vitb32"
    return folders


def measure(name: str, folder: Path, reps: int, cache: Path) -> list[tuple[str, float, float, float]]:
    from gradio_client import Client, handle_file

    from modeling_georsclip import demo
    from modeling_georsclip.inference import load_model
    from modeling_georsclip.resources import samples_dir

    images = samples_dir() / "images"
    image, scene = images / "remoteclip__airport.jpg", images / "mmrotate__demo.jpg"
    model, processor = load_model(folder)
    app = demo.build_app(model, processor, cache_dir=cache)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(app, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    direct = demo.DemoBackend(model, processor, cache_dir=cache)
    calls = {
        "classify": (lambda labels: client.predict(handle_file(str(image)), labels, api_name="/classify"),
                     lambda labels: direct.classify(str(image), labels), LABELS_COLD, LABELS),
        "localize 1024x1024": (lambda q: client.predict(handle_file(str(scene)), q, api_name="/localize"),
                               lambda q: direct.localize(str(scene), q), "airplanes", "airplanes"),
        "search": (lambda q: client.predict(q, 6, api_name="/search"), lambda q: direct.search(q, 6),
                   "an airport", "a harbor with boats"),
    }
    rows = []
    try:
        for endpoint, (served, local, cold_arg, warm_arg) in calls.items():
            cold = timed(lambda: served(cold_arg))  # noqa: B023 - called at once
            warm = statistics.median(timed(lambda: served(warm_arg)) for _ in range(reps))  # noqa: B023
            base = statistics.median(timed(lambda: local(warm_arg)) for _ in range(reps))  # noqa: B023
            rows.append((f"{name} {endpoint}", cold, warm, base))
        fresh = demo.build_app(model, processor, cache_dir=cache).backend  # new app: gallery from the disk cache
        rows.append((f"{name} search (disk cache)", timed(lambda: fresh.search("an airport", 6)), float("nan"),
                     float("nan")))
    finally:
        app.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,vitb32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folders = save_models(Path(tmp), args.sizes.split(","))
        rows = []
        for name, folder in folders.items():
            rows += measure(name, folder, args.reps, Path(tmp) / f"cache-{name}")
    print(f"\n{'call':38s} {'cold s':>8s} {'warm s':>8s} {'direct s':>9s} {'served/direct':>14s}")
    for label, cold, warm, base in rows:
        ratio = warm / base if base == base else float("nan")
        print(f"{label:38s} {cold:8.2f} {warm:8.2f} {base:9.2f} {ratio:14.2f}")
    print(f"torch threads {args.threads}, device cpu, {os.cpu_count()} CPUs visible")


if __name__ == "__main__":
    main()
