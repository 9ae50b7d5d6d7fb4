"""The README's main job end to end (issue 6): one command, one output folder holding everything promised."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard
from PIL import Image

from conftest import ROOT, SAMPLES, subprocess_env

pytestmark = pytest.mark.slow  # the whole main job, every stage a subprocess


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("main")  # outside the repository: no stage may depend on the working folder
    out = cwd / "outputs" / "main"  # the default --output, relative to the working folder
    assert ROOT not in cwd.parents
    completed = subprocess.run(
        [sys.executable, "-m", "modeling_georsclip.main", "--push-to-hub", "me/georsclip-demo", "--dry-run"],
        cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out, completed.stdout, completed.stderr


def test_output_folder_holds_checkpoint_card_results_and_pictures(main_job):
    out, stdout, _ = main_job
    model = out / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    for name in ("model.safetensors", "processor_config.json", "tokenizer.json", "README.md"):
        assert (model / name).is_file(), name
    card = ModelCard.load(model / "README.md")
    assert str(out) not in str(card) and str(Path.home()) not in str(card), "a card carries a local absolute path"
    assert card.data.pipeline_tag == "zero-shot-image-classification" and card.data.widget
    evaluated = {r.dataset_name for r in card.data.eval_results}
    assert {"rs-scenes", "rs-captions", "AIR-SLT-mini"} <= evaluated
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert {"zsc", "retrieval", "selo"} <= set(runs[0]["tasks"])
    assert "Rmi" in (out / "results.md").read_text() and "Rmi" in stdout
    assert "pictures: model/training_curves.png, selo/" in stdout  # the summary lists the pictures
    assert "space/modeling_georsclip" not in stdout and "demo Space (app, card, package copy): space/" in stdout
    curves = Image.open(model / "training_curves.png")
    assert curves.format == "PNG" and curves.width > 400
    overlays = sorted((out / "selo" / "model" / "AIR-SLT-mini").glob("*.png"))
    assert len(overlays) == 4 and all(Image.open(p).size == (1616, 1565) for p in overlays)


def test_dataset_card_and_shards_load_with_plain_datasets(main_job):
    from datasets import load_dataset

    out, _, _ = main_job
    card = DatasetCard.load(out / "dataset" / "README.md")
    assert {c["config_name"] for c in card.data.configs} >= {"pub11", "default"}
    rows = load_dataset(str(out / "dataset"), "pub11", split="train")
    captions = (SAMPLES / "captions.csv").read_text(encoding="utf-8").strip().splitlines()
    assert len(rows) == len(captions) - 1
    assert set(rows.column_names) >= {"image", "caption", "source", "key"}


def test_output_checkpoint_works_with_the_stock_pipeline(main_job):
    from transformers import pipeline

    out, _, _ = main_job
    classifier = pipeline("zero-shot-image-classification", model=str(out / "model"))
    scores = classifier(str(SAMPLES / "images" / "remoteclip__airport.jpg"),
                        candidate_labels=["airport", "forest", "harbor"])
    assert {s["label"] for s in scores} == {"airport", "forest", "harbor"}
    assert abs(sum(s["score"] for s in scores) - 1) < 1e-4


def test_dry_run_lists_model_and_dataset_uploads(main_job):
    out, _, stderr = main_job
    assert "dry run: would upload" in stderr and "model repo me/georsclip-demo" in stderr
    assert "dataset repo me/georsclip-demo-data" in stderr
    listed = re.findall(r"^\s+[\d,]+\s+(\S+)$", stderr, flags=re.M)  # "  <bytes>  <path>" rows of the plan
    assert "model.safetensors" in listed and "data/pub11/train-00000.parquet" in listed
    assert "README.md" in listed and "results.json" in listed
    assert not [p for p in listed if p.startswith(".build")]  # the builder's resume state is never uploaded


def test_push_without_network_keeps_everything_and_says_why(main_job, monkeypatch):
    from modeling_georsclip import main as main_module

    out, _, _ = main_job
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = sorted(p.relative_to(out) for p in (out / "model").rglob("*"))
    messages = []
    monkeypatch.setattr(main_module.logger, "warning", lambda msg, *a: messages.append(msg % a))
    main_module.push(out, out / "model", "me/georsclip-demo", dry_run=False, dataset_built=True)
    assert len(messages) == 2 and all("push skipped" in m and "push it later" in m for m in messages)
    after = sorted(p.relative_to(out) for p in (out / "model").rglob("*"))
    assert set(before) <= set(after) and (out / "model" / "results.json").exists()


def test_missing_samples_is_one_line_naming_the_samples_option(tmp_path, monkeypatch, capsys):
    from modeling_georsclip import main as main_module

    monkeypatch.chdir(tmp_path)
    assert main_module.main(["--samples", str(tmp_path / "nowhere")]) == 2
    monkeypatch.setattr(main_module, "samples_dir", lambda: tmp_path / "not-packaged")  # a wheel without samples
    assert main_module.main([]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("--samples DIR" in line for line in lines)
    assert str(tmp_path / "nowhere") in lines[0] and str(tmp_path / "not-packaged") in lines[1]
    assert not (tmp_path / "outputs").exists()  # nothing written before the check
