"""Evaluation tasks: SeLo pipeline pieces, retrieval parity with clip_benchmark, and evaluate.py end to end
(single process and sharded under accelerate) on the vendored-sample fixture with a tiny random CLIP."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_retrieval
from huggingface_hub import ModelCard
from PIL import Image

from modeling_georsclip import GeoRSCLIPModel, GeoRSCLIPProcessor, pooled
from modeling_georsclip.evaluation import cli
from modeling_georsclip.evaluation.datasets import load_eval_dataset
from modeling_georsclip.evaluation.fixtures import make_eval_fixture
from modeling_georsclip.evaluation.retrieval import evaluate_retrieval
from modeling_georsclip.evaluation.selo import heat_grid, probability_map, selo_windows, window_crops
from modeling_georsclip.testing import save_tiny_clip

from conftest import ROOT, SAMPLES, subprocess_env


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    data = make_eval_fixture(base / "data")
    model = save_tiny_clip(base / "tiny-georsclip")
    return base, data, model


@pytest.fixture(scope="module")
def single_run(setup):
    base, data, model = setup
    out = base / "single" / "results.json"
    proc = subprocess.run([sys.executable, "evaluate.py", "--model", str(model), "--data-root", str(data["root"]),
                           "--tasks", "zsc,retrieval,selo", "--output", str(out)],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(out.read_text())
    assert list(document) == ["runs"] and len(document["runs"]) == 1  # one shape, even for one model
    return out, document["runs"][0]


def test_selo_windows_hand_checked():
    # 600 px, size 256: grid from 0 -> starts 0, 256, 512 (moved back to 344): 3 x 3 windows; grid from 128 ->
    # 128, 384 (moved back to 344): 2 x 2; the window (344, 344) is in both grids and counted once: 12.
    windows = selo_windows(600, 600, sizes=(256,))
    assert sorted({int(w[0]) for w in windows}) == [0, 128, 256, 344] and len(windows) == 12
    assert ((windows[:, 1] - windows[:, 0]) == 256).all()
    scene = selo_windows(1565, 1616)
    assert len({tuple(w) for w in scene}) == len(scene)
    assert scene[:, 0].min() == 0 and scene[:, 1].max() == 1565 and scene[:, 3].max() == 1616
    assert set((scene[:, 1] - scene[:, 0]).tolist()) == {256, 512, 768}


def test_heat_map_is_the_per_pixel_mean():
    rng = np.random.default_rng(0)
    h, w = 90, 70
    starts = rng.integers(0, 40, (30, 2))
    windows = np.stack([starts[:, 0], starts[:, 0] + 50, starts[:, 1], starts[:, 1] + 30], axis=1)
    windows = np.vstack([windows, [[0, h, 0, w]]])  # one window covers everything
    scores = rng.normal(size=len(windows))
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for (r0, r1, c0, c1), s in zip(windows, scores, strict=True):
        total[r0:r1, c0:c1] += s
        count[r0:r1, c0:c1] += 1
    np.testing.assert_allclose(heat_grid(scores, windows, (h, w)).expand(), total / count, atol=1e-12)


def test_paper_mode_adds_only_small_jpeg_losses():
    scene = np.asarray(Image.open(SAMPLES / "images" / "mmrotate__dota_demo.jpg").convert("RGB"))
    windows = selo_windows(*scene.shape[:2])[:3]
    paper, clean = window_crops(scene, windows, "paper"), window_crops(scene, windows, "clean")
    diffs = [np.abs(np.asarray(p, float) - np.asarray(c, float)) for p, c in zip(paper, clean, strict=True)]
    assert all(p.size == (256, 256) for p in paper) and 0 < max(d.mean() for d in diffs) < 4
    yy, xx = np.mgrid[0:600, 0:500]
    heat = np.sin(xx / 90.0) + np.cos(yy / 70.0)
    prob_paper, gray = probability_map(heat, "paper")
    prob_clean, gray_clean = probability_map(heat, "clean")
    np.testing.assert_array_equal(gray, gray_clean)
    np.testing.assert_array_equal(prob_clean, gray / 255.0)
    assert 0 < np.abs(prob_paper - prob_clean).max() < 0.05


def test_retrieval_matches_clip_benchmark_evaluate(setup):
    _, data, model_dir = setup
    model = GeoRSCLIPModel.from_pretrained(model_dir).eval()
    processor = GeoRSCLIPProcessor.from_pretrained(model_dir)
    dataset = load_eval_dataset(data["retrieval"], "retrieval")
    ours = evaluate_retrieval(model, processor, dataset, batch_size=2)

    class OpenClipStyle(torch.nn.Module):  # what clip_benchmark expects: encode_image / encode_text
        def encode_image(self, pixels):
            return pooled(model.get_image_features(pixel_values=pixels))

        def encode_text(self, ids):
            return pooled(model.get_text_features(input_ids=ids))

    def tokenizer(texts):
        return processor(text=texts, padding="max_length", return_tensors="pt")["input_ids"]

    grouped = [[c for c, i in zip(dataset.captions, dataset.text_to_image, strict=True) if i == j]
               for j in range(len(dataset.images))]
    pixels = processor(images=[str(p) for p in dataset.images], return_tensors="pt")["pixel_values"]
    loader = [(pixels[s : s + 2], grouped[s : s + 2]) for s in range(0, len(grouped), 2)]
    with torch.no_grad():
        ref = zeroshot_retrieval.evaluate(OpenClipStyle(), loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5])
    for k in (1, 5):
        assert ours[f"t2i_R@{k}"] == pytest.approx(100 * ref[f"image_retrieval_recall@{k}"], abs=1e-4)
        assert ours[f"i2t_R@{k}"] == pytest.approx(100 * ref[f"text_retrieval_recall@{k}"], abs=1e-4)


@pytest.mark.slow
def test_evaluate_py_end_to_end(setup, single_run):
    base, data, model = setup
    out, results = single_run
    tasks = results["tasks"]
    zsc = tasks["zsc"]["rs-scenes"]
    assert zsc["n_images"] == 8 and zsc["n_unreadable"] == 1 and zsc["n_templates"] == 105
    assert zsc["head_mode"] == "paper" and 0 <= zsc["top1"] <= zsc["top5"] <= 100
    ret = tasks["retrieval"]["rs-captions"]
    assert ret["n_images"] == 5 and ret["n_captions"] == 24 and set(ret) >= {"i2t_R@10", "t2i_R@1", "mR"}
    selo = tasks["selo"]["AIR-SLT-mini"]
    assert selo["n_queries"] == 4 and selo["mode"] == "paper" and all(0 <= selo[k] <= 1 for k in ("Rsu", "Rda", "Ras"))
    assert results["n_unreadable"] == 1
    overlays = sorted((out.parent / "results_selo" / "tiny-georsclip" / "AIR-SLT-mini").glob("*.png"))
    assert len(overlays) == 4 and Image.open(overlays[0]).size == (1616, 1565)
    table = out.with_suffix(".md").read_text()
    assert "| Zero-shot classification | rs-scenes | Top-1 accuracy |" in table and "unreadable images | 1 |" in table
    card = ModelCard.load(model / "README.md")
    values = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert values[("rs-scenes", "Top-1 accuracy")] == pytest.approx(zsc["top1"], abs=1e-4)
    assert values[("AIR-SLT-mini", "Rmi")] == pytest.approx(selo["Rmi"], abs=1e-4)

    # a second model's results side by side
    other = base / "other.json"
    other.write_text(json.dumps({"runs": [{**results, "model_name": "other-model"}]}))
    combined = base / "combined.json"
    assert cli.main(["--compare", str(out), str(other), "--output", str(combined)]) == 0
    header = combined.with_suffix(".md").read_text().splitlines()[0]
    assert header == "| task | dataset | metric | tiny-georsclip | other-model |"
    assert [r["model_name"] for r in json.loads(combined.read_text())["runs"]] == ["tiny-georsclip", "other-model"]
    bare = base / "bare.json"  # a bare run is not a results file
    bare.write_text(json.dumps(results))
    assert cli.main(["--compare", str(bare), "--output", str(base / "never.json")]) == 2
    assert not (base / "never.json").exists()


@pytest.mark.slow
def test_sharded_under_accelerate_equals_single_process(setup, single_run):
    base, data, model = setup
    out = base / "sharded" / "results.json"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    proc = subprocess.run(launcher + ["evaluate.py", "--model", str(model), "--data-root", str(data["root"]),
                                      "--output", str(out), "--no-card", "--batch-size", "3"],
                          cwd=ROOT, env=subprocess_env(ACCELERATE_USE_CPU="1"), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded, single = json.loads(out.read_text())["runs"][0]["tasks"], single_run[1]["tasks"]
    for task, datasets in single.items():
        for name, scores in datasets.items():
            for key, value in scores.items():
                if isinstance(value, float):
                    assert sharded[task][name][key] == pytest.approx(value, abs=1e-4), (task, key)
    for a, b in zip(sharded["selo"]["AIR-SLT-mini"]["per_query"], single["selo"]["AIR-SLT-mini"]["per_query"], strict=True):
        assert a["index"] == b["index"] and a["Rmi"] == pytest.approx(b["Rmi"], abs=1e-6)
