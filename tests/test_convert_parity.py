"""The open_clip -> transformers conversion against open_clip itself.

Tiny random open_clip models (real 49,408-token vocabulary, 77-token context) with every weight perturbed,
so that a swapped or untransposed mapping changes the outputs; one QuickGELU and one GELU arch.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from modeling_georsclip import GeoRSCLIPModel, GeoRSCLIPProcessor
from modeling_georsclip.convert import (
    ARCHS,
    ArchSpec,
    build_model,
    normalize_state_dict,
    parse_hf_url,
    to_hf_state_dict,
    validate_state_dict,
)
from modeling_georsclip.resources import arch_names, get_arch_config
from modeling_georsclip.testing import perturbed_open_clip, tiny_open_clip_config

from conftest import SAMPLES, TEST_DATA

CAPTIONS_FILE = TEST_DATA / "rsitmd_test_caps.txt"
TOLERANCE = 1e-4


def real_captions(n: int = 48) -> list[str]:
    lines = [line.strip() for line in CAPTIONS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    longest = max(lines, key=len)
    return lines[:n] + [longest, " ".join(lines[:12])]  # the last one is far past 77 tokens


@pytest.fixture(scope="module")
def processor() -> GeoRSCLIPProcessor:
    return GeoRSCLIPProcessor.default(image_size=32)


def write_config(tmp_path: Path, cfg: dict, name: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quickgelu", "gelu"])
def test_converted_embeddings_match_open_clip(quick_gelu, processor):
    cfg = tiny_open_clip_config(quick_gelu)
    reference = perturbed_open_clip(cfg)
    spec = ArchSpec.from_open_clip_config("tiny", cfg)
    state, _ = normalize_state_dict(reference.state_dict())
    validate_state_dict(state, spec)
    model = build_model(state, spec)
    assert model.config.text_config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")

    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    captions = real_captions()
    with torch.no_grad():
        oc_image = F.normalize(reference.encode_image(pixels), dim=-1)
        oc_text = F.normalize(reference.encode_text(open_clip.tokenize(captions)), dim=-1)
    ours_image = model.image_embeddings(pixels)
    ours_text = model.text_embeddings(captions, processor, batch_size=16)

    assert (ours_image - oc_image).abs().max() < TOLERANCE
    assert (ours_text - oc_text).abs().max() < TOLERANCE
    assert model.logit_scale.item() == reference.logit_scale.item()
    # the perturbation is large enough that the wrong activation would be caught
    wrong = ArchSpec.from_open_clip_config("tiny", {**cfg, "quick_gelu": not quick_gelu})
    wrong_image = build_model(state, wrong).image_embeddings(pixels)
    assert (wrong_image - oc_image).abs().max() > 10 * TOLERANCE


def test_every_hf_weight_comes_from_a_distinct_open_clip_weight():
    """A mapping that copied one tensor twice (e.g. q into k) would still load; this catches it."""
    cfg = tiny_open_clip_config(True)
    state, _ = normalize_state_dict(perturbed_open_clip(cfg).state_dict())
    hf = to_hf_state_dict(state, ArchSpec.from_open_clip_config("tiny", cfg))
    fingerprints = [tuple(v.flatten()[:8].tolist()) + (v.numel(),) for v in hf.values()]
    assert len(set(fingerprints)) == len(fingerprints)
    assert sum(v.numel() for v in hf.values()) == sum(v.numel() for v in state.values())


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_arch_table_matches_open_clip_config(name):
    cfg = open_clip.get_model_config(name)
    spec = ARCHS[name]
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    assert spec.embed_dim == cfg["embed_dim"]
    assert spec.quick_gelu == cfg.get("quick_gelu", False)
    assert spec.activation == ("quick_gelu" if cfg.get("quick_gelu", False) else "gelu")
    assert spec.image_size == vision["image_size"] and spec.patch_size == vision["patch_size"]
    assert spec.vision_layers == vision["layers"] and spec.vision_width == vision["width"]
    assert spec.vision_heads == vision["width"] // vision.get("head_width", 64)
    assert spec.vision_mlp == int(vision["width"] * vision.get("mlp_ratio", 4.0))
    assert (spec.text_width, spec.text_layers, spec.text_heads) == (text["width"], text["layers"], text["heads"])
    assert (spec.context_length, spec.vocab_size) == (text["context_length"], text["vocab_size"])
    # shapes of open_clip's own model for that name (built on the meta device: no memory, no init)
    with torch.device("meta"):
        model = CLIP(**cfg)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == spec.expected_shapes()


@pytest.mark.parametrize("name", arch_names())
def test_packaged_arch_json_is_open_clips_own_config(name):
    """Every archs/<NAME>.json is the installed open_clip's model_configs/<NAME>.json, key for key."""
    assert get_arch_config(name) == open_clip.get_model_config(name)
    assert name in ARCHS


def test_get_arch_config_takes_names_slash_spellings_and_paths(tmp_path):
    from modeling_georsclip.resources import ResourceError

    assert get_arch_config("ViT-B/32") == get_arch_config("ViT-B-32") == open_clip.get_model_config("ViT-B-32")
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps(tiny_open_clip_config(True)))
    assert get_arch_config(str(custom)) == tiny_open_clip_config(True)
    with pytest.raises(ResourceError, match="unknown arch 'ViT-Z-99'.*ViT-B-32-quickgelu"):
        get_arch_config("ViT-Z-99")
    custom.write_text("{}")
    with pytest.raises(ValueError, match="no embed_dim"):
        get_arch_config(custom)


def test_arch_table_has_the_required_names():
    required = {"ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-B-16-quickgelu", "ViT-L-14",
                "ViT-L-14-quickgelu", "ViT-L-14-336", "ViT-H-14"}
    assert required <= set(ARCHS)
    assert not ARCHS["ViT-B-32"].quick_gelu and ARCHS["ViT-B-32-quickgelu"].quick_gelu
    assert not ARCHS["ViT-H-14"].quick_gelu


def test_parse_hf_url():
    assert parse_hf_url("hf://Zilun/GeoRSCLIP/ckpt/RS5M_ViT-B-32.pt") == (
        "Zilun/GeoRSCLIP", "ckpt/RS5M_ViT-B-32.pt", None)
    assert parse_hf_url("hf://chendelong/RemoteCLIP@v1/RemoteCLIP-ViT-B-32.pt") == (
        "chendelong/RemoteCLIP", "RemoteCLIP-ViT-B-32.pt", "v1")


# ------------------------------------------------------------------------------------- CLI end to end
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """(raw state-dict file, arch config json, the open_clip model) for a tiny QuickGELU model."""
    root = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_open_clip_config(True)
    model = perturbed_open_clip(cfg, seed=3)
    path = root / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path, write_config(root, cfg, "tiny-quickgelu"), model


@pytest.fixture(scope="module")
def converted(tiny_checkpoint, tmp_path_factory):
    from modeling_georsclip.convert import main

    path, arch, _ = tiny_checkpoint
    out = tmp_path_factory.mktemp("conv") / "model"
    main(["--checkpoint", str(path), "--arch", str(arch), "--output", str(out)])
    return out


def test_cli_output_is_a_plain_clip_checkpoint(converted, tiny_checkpoint, capsys):
    from transformers import AutoModel, AutoProcessor, CLIPModel, pipeline

    _, _, reference = tiny_checkpoint
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    assert config["text_config"]["eos_token_id"] == 49407 and config["text_config"]["bos_token_id"] == 49406
    assert config["text_config"]["layer_norm_eps"] == 1e-5
    assert (converted / "model.safetensors").exists() and not list(converted.glob("*.bin"))
    assert not list(converted.parent.glob(".model.tmp-*"))

    clip = CLIPModel.from_pretrained(converted)
    auto = AutoModel.from_pretrained(converted)
    assert type(auto) is CLIPModel
    assert torch.equal(clip.logit_scale, reference.logit_scale)
    proc = AutoProcessor.from_pretrained(converted)
    assert proc.image_processor.crop_size["height"] == 32 and proc.tokenizer.model_max_length == 77

    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = F.normalize(auto.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        theirs = F.normalize(reference.encode_image(pixels), dim=-1)
    assert (ours - theirs).abs().max() < TOLERANCE

    image = SAMPLES / "images" / "cliprsicd__stadium_1.jpg"
    classifier = pipeline("zero-shot-image-classification", model=str(converted))
    scores = classifier(str(image), candidate_labels=["stadium", "harbor", "forest"])
    assert sorted(s["label"] for s in scores) == ["forest", "harbor", "stadium"]
    assert abs(sum(s["score"] for s in scores) - 1.0) < 1e-5


def test_cli_writes_model_card_with_provenance(converted, tiny_checkpoint):
    import hashlib

    path, _, _ = tiny_checkpoint
    card = (converted / "README.md").read_text()
    assert card.startswith("---") and "zero-shot-image-classification" in card
    assert hashlib.sha256(path.read_bytes()).hexdigest() in card
    provenance = json.loads((converted / "conversion.json").read_text())
    assert provenance["parity"]["image_embeds_max_abs_diff"] < TOLERANCE
    assert provenance["parity"]["logit_scale_abs_diff"] == 0.0


def _hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("layout", ["training", "itra", "safetensors", "custom_text"])
def test_checkpoint_layouts_convert_to_the_same_weights(layout, tiny_checkpoint, converted, tmp_path):
    from safetensors.torch import save_file

    from modeling_georsclip.convert import main

    _, arch, model = tiny_checkpoint
    state = model.state_dict()
    path = tmp_path / "ckpt.pt"
    if layout == "training":  # open_clip training: DDP-wrapped, with optimizer state beside it
        torch.save({"epoch": 2, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}}, path)
    elif layout == "itra":  # ITRA (RemoteCLIP / RS5M training code): towers as separate modules
        itra = {}
        for key, value in state.items():
            if key.startswith("visual."):
                itra[f"module.image_backbone.{key[len('visual.'):]}"] = value
            elif key == "logit_scale":
                itra["module.logit_scale"] = value.reshape(1)
            else:
                itra[f"module.text_backbone.{key}"] = value
        torch.save({"epoch": 1, "state_dict": itra}, path)
    elif layout == "safetensors":
        path = tmp_path / "ckpt.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # open_clip CustomTextCLIP keeps the text tower under "text."
        text_keys = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        torch.save({(f"text.{k}" if k.startswith(text_keys) else k): v for k, v in state.items()}, path)
    out = tmp_path / "out"
    main(["--checkpoint", str(path), "--arch", str(arch), "--output", str(out), "--skip-parity"])
    expected, got = _hf_weights(converted), _hf_weights(out)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_hf_url_downloads_with_hf_hub_download(monkeypatch, tiny_checkpoint, tmp_path):
    import huggingface_hub

    from modeling_georsclip.convert import main

    path, arch, _ = tiny_checkpoint
    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        calls.append((repo_id, filename, revision))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    out = tmp_path / "out"
    main(["--checkpoint", "hf://someone/tiny-clip/ckpt/tiny.pt", "--arch", str(arch), "--output", str(out),
          "--skip-parity"])
    assert calls == [("someone/tiny-clip", "ckpt/tiny.pt", None)]
    assert (out / "model.safetensors").exists()


def test_parity_failure_writes_nothing(monkeypatch, tiny_checkpoint, tmp_path, capsys):
    """A wrong mapping (q and k swapped) must be caught by the final open_clip check, leaving no output."""
    from modeling_georsclip import convert as convert_module

    path, arch, _ = tiny_checkpoint
    original = convert_module.to_hf_state_dict

    def swapped(state, spec):
        hf = original(state, spec)
        key_q = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
        key_k = key_q.replace("q_proj", "k_proj")
        hf[key_q], hf[key_k] = hf[key_k], hf[key_q]
        return hf

    monkeypatch.setattr(convert_module, "to_hf_state_dict", swapped)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        convert_module.main(["--checkpoint", str(path), "--arch", str(arch), "--output", str(out)])
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: parity check failed")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_loaded_model_is_our_subclass(converted):
    model = GeoRSCLIPModel.from_pretrained(converted)
    assert isinstance(model, GeoRSCLIPModel) and model.config.model_type == "clip"
