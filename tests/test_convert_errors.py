"""Bad input to the converter: one ``error:`` line naming the problem, exit status 1, no output folder."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP

from modeling_georsclip.convert import main

from conftest import SAMPLES

TINY = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    state = CLIP(**TINY).state_dict()
    torch.save(state, root / "tiny.pt")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return root / "tiny.pt", root / "tiny.json", state


class Payload:
    """Stands for any pickled Python object: loading it would run arbitrary code."""


def run_failing(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1, captured.err
    return errors[0]


def assert_no_output(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_missing_file(tmp_path, tiny, capsys):
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(tmp_path / "nope.pt"), "--arch", str(tiny[1]), "--output", str(out)],
                       capsys)
    assert "checkpoint not found" in line and "nope.pt" in line
    assert_no_output(out)


def test_not_a_checkpoint(tmp_path, tiny, capsys):
    image = SAMPLES / "images" / "cliprsicd__stadium_1.jpg"
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(image), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "not a PyTorch or safetensors checkpoint" in line and "stadium_1.jpg" in line
    assert_no_output(out)


def test_empty_file(tmp_path, tiny, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(empty), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "empty" in line and "empty.pt" in line
    assert_no_output(out)


def test_pickle_holding_objects_is_refused(tmp_path, tiny, capsys):
    evil = tmp_path / "objects.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, evil)
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(evil), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "weights_only" in line and "Payload" in line
    assert_no_output(out)


def test_legacy_pickle_with_code_is_refused(tmp_path, tiny, capsys):
    evil = tmp_path / "legacy.pkl"
    with open(evil, "wb") as handle:
        pickle.dump({"w": Payload()}, handle, protocol=2)
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(evil), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "weights_only" in line and "Payload" in line and "legacy.pkl" in line
    assert_no_output(out)
    with open(evil, "wb") as handle:  # protocol 4 framing is refused by the weights_only unpickler itself
        pickle.dump({"w": Payload()}, handle, protocol=4)
    line = run_failing(["--checkpoint", str(evil), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "weights_only" in line and "legacy.pkl" in line
    assert_no_output(out)


def test_truncated_file(tmp_path, tiny, capsys):
    data = tiny[0].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(cut), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "truncated" in line and "cut.pt" in line
    assert_no_output(out)


def test_truncated_safetensors(tmp_path, tiny, capsys):
    from safetensors.torch import save_file

    whole = tmp_path / "whole.safetensors"
    save_file({k: v.contiguous() for k, v in tiny[2].items()}, str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-1000])
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(cut), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "safetensors" in line and "cut.safetensors" in line
    assert_no_output(out)


def test_wrong_arch_names_key_and_shapes(tmp_path, tiny, capsys):
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(tiny[0]), "--arch", "ViT-B-32-quickgelu", "--output", str(out)], capsys)
    assert "key 'token_embedding.weight' has shape (49408, 32), --arch ViT-B-32-quickgelu expects (49408, 512)" in line
    assert_no_output(out)


def test_real_size_shape_mismatch_suggests_matching_arch(tmp_path, capsys):
    """ViT-L-14 shaped weights (meta-free: shapes only matter) given as ViT-B-32: key, shapes and a hint."""
    from modeling_georsclip.convert import ARCHS, ConversionError, validate_state_dict

    state = {k: torch.empty(s) for k, s in ARCHS["ViT-L-14"].expected_shapes().items()}
    with pytest.raises(ConversionError) as info:
        validate_state_dict(state, ARCHS["ViT-B-32"], "RemoteCLIP-ViT-L-14.pt")
    message = str(info.value)
    assert "key 'token_embedding.weight' has shape (49408, 768), --arch ViT-B-32 expects (49408, 512)" in message
    assert "ViT-L-14 / ViT-L-14-quickgelu" in message


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny, capsys):
    state = dict(tiny[2])
    del state["visual.proj"]
    path = tmp_path / "missing.pt"
    torch.save(state, path)
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(path), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "missing key 'visual.proj'" in line
    assert_no_output(out)

    state = dict(tiny[2], logit_bias=torch.zeros(1))  # a SigLIP-style extra weight
    torch.save(state, path)
    line = run_failing(["--checkpoint", str(path), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "unexpected key 'logit_bias'" in line
    assert_no_output(out)


def test_unknown_arch(tmp_path, tiny, capsys):
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(tiny[0]), "--arch", "ViT-Z-99", "--output", str(out)], capsys)
    assert "unknown --arch 'ViT-Z-99'" in line and "ViT-B-32-quickgelu" in line
    line = run_failing(["--checkpoint", str(tiny[0]), "--arch", "RN50", "--output", str(out)], capsys)
    assert "ResNet" in line


def test_known_checkpoint_with_wrong_activation(tmp_path, tiny, capsys):
    """The classic trap: GeoRSCLIP B-32 converted as GELU ViT-B-32."""
    renamed = tmp_path / "RS5M_ViT-B-32.pt"
    renamed.write_bytes(tiny[0].read_bytes())
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(renamed), "--arch", "ViT-B-32", "--output", str(out)], capsys)
    assert "--arch ViT-B-32-quickgelu" in line and "QuickGELU" in line
    assert_no_output(out)


def test_unwritable_output(tmp_path, tiny, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "model"
    line = run_failing(["--checkpoint", str(tiny[0]), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "a_file" in line
    assert blocker.read_text() == "not a folder"


def test_non_empty_output_needs_overwrite(tmp_path, tiny, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    line = run_failing(["--checkpoint", str(tiny[0]), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    assert "--overwrite" in line
    assert (out / "precious.txt").read_text() == "keep me"


def test_hub_download_failure_is_one_line(tmp_path, tiny, capsys, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no network\nsecond line")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", "hf://Zilun/GeoRSCLIP/ckpt/RS5M_ViT-B-32.pt", "--arch",
                        "ViT-B-32-quickgelu", "--output", str(out)], capsys)
    assert "cannot download hf://Zilun/GeoRSCLIP/ckpt/RS5M_ViT-B-32.pt" in line and "second line" not in line
    assert_no_output(out)
