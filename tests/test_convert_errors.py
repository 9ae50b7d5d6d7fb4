"""Bad input to the converter: one ``error:`` line naming the problem, exit status 1, no output folder."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP

from modeling_georsclip.convert import main
from modeling_georsclip.resources import samples_dir

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


def _save_pickle(path: Path, protocol: int) -> Path:
    with open(path, "wb") as handle:
        pickle.dump({"w": Payload()}, handle, protocol=protocol)
    return path


def _truncated(path: Path, data: bytes, cut: int) -> Path:
    path.write_bytes(data[:cut])
    return path


def _safetensors(path: Path, state: dict) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _state_file(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def _without(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


# case -> (write the bad checkpoint into a folder, given the tiny (checkpoint, arch, state); what the line says)
BAD_CHECKPOINTS = {
    "missing file": (lambda d, t: d / "nope.pt", ["checkpoint not found", "nope.pt"]),
    "not a checkpoint": (lambda d, t: samples_dir() / "images" / "cliprsicd__stadium_1.jpg",
                         ["not a PyTorch or safetensors checkpoint", "stadium_1.jpg"]),
    "empty file": (lambda d, t: _truncated(d / "empty.pt", b"", 0), ["empty", "empty.pt"]),
    "pickle holding objects": (
        lambda d, t: _state_file(d / "objects.pt", {"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}),
        ["weights_only", "Payload"]),
    "legacy pickle with code": (lambda d, t: _save_pickle(d / "legacy.pkl", 2), ["weights_only", "Payload", "legacy.pkl"]),
    # protocol 4 framing is refused by the weights_only unpickler itself
    "protocol 4 pickle with code": (lambda d, t: _save_pickle(d / "legacy.pkl", 4), ["weights_only", "legacy.pkl"]),
    "truncated zip": (lambda d, t: _truncated(d / "cut.pt", t[0].read_bytes(), t[0].stat().st_size // 2),
                      ["truncated", "cut.pt"]),
    "truncated safetensors": (
        lambda d, t: _truncated(d / "cut.safetensors", _safetensors(d / "whole.safetensors", t[2]).read_bytes(), -1000),
        ["safetensors", "cut.safetensors"]),
    "missing key": (lambda d, t: _state_file(d / "missing.pt", _without(t[2], "visual.proj")),
                    ["missing key 'visual.proj'", "missing.pt"]),
    "unexpected key": (lambda d, t: _state_file(d / "extra.pt", dict(t[2], logit_bias=torch.zeros(1))),  # SigLIP-style
                       ["unexpected key 'logit_bias'", "extra.pt"]),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_error_line(case, tmp_path, tiny, capsys):
    make, expected = BAD_CHECKPOINTS[case]
    checkpoint = make(tmp_path, tiny)
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(checkpoint), "--arch", str(tiny[1]), "--output", str(out)], capsys)
    for text in expected:
        assert text in line, (case, line)
    assert_no_output(out)


# case -> (checkpoint file name, --arch, what the line says)
BAD_ARCHS = {
    "wrong arch: key and shapes named": (
        "tiny.pt", "ViT-B-32-quickgelu",
        ["key 'token_embedding.weight' has shape (49408, 32), --arch ViT-B-32-quickgelu expects (49408, 512)"]),
    "unknown arch": ("tiny.pt", "ViT-Z-99", ["unknown --arch 'ViT-Z-99'", "ViT-B-32-quickgelu"]),
    "ResNet arch": ("tiny.pt", "RN50", ["ResNet"]),
    # the classic trap: GeoRSCLIP B-32 converted as GELU ViT-B-32
    "known checkpoint, wrong activation": ("RS5M_ViT-B-32.pt", "ViT-B-32", ["--arch ViT-B-32-quickgelu", "QuickGELU"]),
}


@pytest.mark.parametrize("case", list(BAD_ARCHS))
def test_bad_arch_is_one_error_line(case, tmp_path, tiny, capsys):
    name, arch, expected = BAD_ARCHS[case]
    checkpoint = tmp_path / name
    checkpoint.write_bytes(tiny[0].read_bytes())
    out = tmp_path / "out"
    line = run_failing(["--checkpoint", str(checkpoint), "--arch", arch, "--output", str(out)], capsys)
    for text in expected:
        assert text in line, (case, line)
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
