"""Model cards round-trip through huggingface_hub, model-index merging, dry-run upload plans, push errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard, SpaceCard

from modeling_georsclip import hub
from modeling_georsclip.hub import render_model_card
from modeling_georsclip.testing import save_tiny_clip

AID = dict(
    task_type="zero-shot-image-classification", task_name="Zero-shot classification", dataset_name="AID",
    dataset_type="aid", dataset_split="test", metric_type="accuracy", metric_name="Top-1 accuracy",
    metric_value=74.42,
)
RSITMD = dict(
    task_type="image-text-retrieval", dataset_name="RSITMD", dataset_type="rsitmd", dataset_split="test",
    metric_type="mean_recall", metric_name="mR", metric_value=35.33,
)


def test_model_card_round_trip(tmp_path):
    path = hub.write_model_card(
        tmp_path, "GeoRSCLIP-ViT-B-32", base_model="openai/clip-vit-base-patch32", license="mit",
        datasets=["Zilun/RS5M"], eval_results=[AID], provenance={"source": "RS5M_ViT-B-32.pt"},
    )
    card = ModelCard.load(path)
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert card.data.library_name == "transformers"
    assert card.data.base_model == "openai/clip-vit-base-patch32"
    assert card.data.datasets == ["Zilun/RS5M"]
    assert card.data.widget and all("candidate_labels" in w and w["src"].startswith("https://") for w in card.data.widget)
    (result,) = card.data.eval_results
    assert (result.dataset_name, result.metric_type, result.metric_value) == ("AID", "accuracy", 74.42)
    assert "RS5M_ViT-B-32.pt" in card.text and "74.42" in card.text


def test_update_model_index_replaces_and_appends(tmp_path):
    hub.write_model_card(tmp_path, "m", eval_results=[AID])
    hub.update_model_index(tmp_path, [{**AID, "metric_value": 80.0}, RSITMD])
    card = ModelCard.load(tmp_path / "README.md")
    values = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values == {("AID", "accuracy"): 80.0, ("RSITMD", "mean_recall"): 35.33}
    table = card.text.split(hub.RESULTS_START)[1].split(hub.RESULTS_END)[0]
    assert "80.00" in table and "35.33" in table and "74.42" not in table


def test_update_model_index_rejects_incomplete_result(tmp_path):
    with pytest.raises(ValueError, match="metric_value"):
        hub.update_model_index(tmp_path, [{k: v for k, v in AID.items() if k != "metric_value"}])


def test_upload_plan_lists_files_and_skips_git(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "notes.txt").write_text("abc")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    plan = hub.upload_plan(tmp_path)
    assert plan == [("model.safetensors", 10), ("sub/notes.txt", 3)]
    assert hub.upload_plan(tmp_path, ignore_patterns=["*.txt"]) == [("model.safetensors", 10)]


def test_dry_run_push_lists_without_network(tmp_path, capsys, caplog):
    (tmp_path / "config.json").write_text("{}")
    assert hub.main(["push", str(tmp_path), "--repo-id", "me/model", "--dry-run"]) == 0
    listing = hub.format_plan(hub.upload_plan(tmp_path), "me/model", "model", "Upload with georsclip")
    assert "config.json" in listing and "1 files" in listing and "commit message: Upload with georsclip" in listing


@pytest.mark.parametrize("offline", ["1", "0"])
def test_push_without_network_or_token_is_a_clear_error(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no cached token
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    with pytest.raises(hub.PushError, match="push it later"):
        hub.push_folder(tmp_path / "out", "me/model")
    assert (tmp_path / "out" / "config.json").read_text() == "{}"


def test_local_base_model_goes_to_provenance_not_metadata(tmp_path):
    local = tmp_path / "base"
    local.mkdir()
    card = ModelCard.load(hub.write_model_card(tmp_path / "out", "m", base_model=str(local)))
    assert card.data.base_model is None
    assert str(local) not in card.text and "| base model (local) | base |" in card.text  # its name, not its path
    card = ModelCard.load(hub.write_model_card(tmp_path / "out2", "m", base_model="openai/clip-vit-base-patch32"))
    assert card.data.base_model == "openai/clip-vit-base-patch32"


METRIC_MODULES = sorted((Path(hub.__file__).parent / "metrics" / "modules").iterdir())


@pytest.mark.parametrize("module", METRIC_MODULES, ids=lambda p: p.name)
def test_metric_cards_load_as_space_cards(module):
    """Each evaluate module folder is publishable as a Hub Space: its card parses and points at real files."""
    card = SpaceCard.load(module / "README.md")
    assert card.data.title == module.name
    assert card.data.sdk == "gradio" and (module / card.data.app_file).is_file()
    assert "evaluate" in card.data.tags and (module / f"{module.name}.py").is_file()
    assert "## How to use" in card.text


def test_cards_carry_no_local_absolute_paths(tmp_path):
    """A card for a model trained from a local base model on local data names folders, never their paths."""
    from modeling_georsclip.training.card import write_training_card
    from modeling_georsclip.training.config import TrainConfig

    base = save_tiny_clip(tmp_path / "outputs" / "main" / "work" / "base")
    data = tmp_path / "outputs" / "main" / "dataset"
    cfg = TrainConfig()
    cfg.model, cfg.output_dir = str(base), str(tmp_path / "runs" / "demo")
    cfg.data = [{"path": str(data), "config": "pub11"}]
    cfg.dataset_names = [str(data)]
    cfg.val_data = str(tmp_path / "val" / "captions.csv")
    folder = tmp_path / "card"
    folder.mkdir()
    write_training_card(folder, cfg, {"i2t_R@1": 50.0, "mR": 40.0})
    text = (folder / "README.md").read_text()
    card = ModelCard.load(folder / "README.md")
    assert str(tmp_path) not in text and "/outputs/main" not in text
    assert card.data.base_model is None and "| base model (local) | base |" in text
    assert card.data.datasets == ["dataset"] and "'path': 'dataset'" in text
    assert card.data.model_name == "demo"
    # validation scores carry evaluate.py's metric types, on the validation split
    rows = {(r.metric_name, r.metric_type, r.dataset_split) for r in card.data.eval_results}
    assert rows == {("i2t R@1", "recall", "validation"), ("mR", "mean_recall", "validation")}
    # a Hub id stays what it is
    card = render_model_card("m", base_model="openai/clip-vit-base-patch32", provenance={"source": "hf://a/b/c.pt"})
    assert card.data.base_model == "openai/clip-vit-base-patch32" and "hf://a/b/c.pt" in str(card)
