"""It learns: a tiny CLIP trained briefly on a procedural remote-sensing-like set retrieves far above chance."""

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from modeling_georsclip.processing import GeoRSCLIPProcessor
from modeling_georsclip.resources import resolve_config
from modeling_georsclip.testing import tiny_clip
from modeling_georsclip.training import TrainConfig, train
from modeling_georsclip.training.loop import ValidationSet

# Land-cover-like backgrounds and man-made objects drawn on them.
SURFACES = {"forest": (34, 100, 40), "water": (30, 70, 160), "desert": (200, 170, 100), "urban": (120, 120, 120)}
OBJECTS = ["round tank", "square building", "long road"]


def scene(surface: str, obj: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    base = np.array(SURFACES[surface], dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.uint8)  # texture
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    x, y = rng.integers(8, size - 24, 2)
    s = int(rng.integers(14, 20))
    colour = (235, 235, 235) if surface != "urban" else (250, 80, 60)
    if obj == "round tank":
        draw.ellipse([x, y, x + s, y + s], fill=colour)
    elif obj == "square building":
        draw.rectangle([x, y, x + s, y + s], fill=colour)
    else:
        draw.rectangle([0, y, size, y + 5], fill=colour)
    return img


def make_split(folder: Path, per_class: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    for surface in SURFACES:
        for obj in OBJECTS:
            for i in range(per_class):
                name = f"{surface}_{obj.replace(' ', '_')}_{i}.png"
                scene(surface, obj, rng).save(folder / name)
                rows.append((name, f"a satellite image of a {obj} in the {surface}"))
    with open(folder / "captions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("file", "caption"), *rows])
    return folder / "captions.csv"


def test_tiny_model_learns_retrieval(tmp_path):
    train_csv = make_split(tmp_path / "train", per_class=12, seed=0)
    val_csv = make_split(tmp_path / "val", per_class=1, seed=1)  # 12 unseen scenes, one per caption
    val = {"path": str(val_csv)}
    processor = GeoRSCLIPProcessor.default(image_size=32)
    before = ValidationSet(val, processor, 100).evaluate(tiny_clip(seed=0))

    cfg = TrainConfig.load(resolve_config("tiny_cpu"), [
        "--output_dir", str(tmp_path / "run"), "--data", f"[{train_csv}]", "--val_data", str(val_csv),
        "--batch_size", "24", "--max_steps", "30", "--lr", "2e-3", "--warmup_steps", "5", "--num_workers", "2",
        "--checkpoint_every", "0", "--report_to", "none", "--shuffle_buffer", "200"])
    final = train(cfg)

    from modeling_georsclip.modeling import GeoRSCLIPModel

    after = ValidationSet(val, processor, 100).evaluate(GeoRSCLIPModel.from_pretrained(final))
    chance_r1 = 100 / 12
    assert after["t2i_R@1"] >= 3 * chance_r1, after  # chance is 8.3 %
    assert after["i2t_R@1"] >= 3 * chance_r1, after
    assert after["mR"] > before["mR"] + 20, (before, after)
    assert (final / "training_curves.png").stat().st_size > 1000
