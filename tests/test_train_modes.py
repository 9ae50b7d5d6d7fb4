"""Every training mode runs 2 steps in-process and saves a folder that stock ``CLIPModel`` loads.

Each test also checks that the mode really took effect (autocast dtype, frozen layers, adapter type, the source
mix, the per-process batch), not only that nothing crashed.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel

from modeling_georsclip.testing import tiny_clip
from modeling_georsclip.training import ConfigError, TrainConfig, loop, train

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples/rs-samples"
QUICK = ["--max_steps", "2", "--batch_size", "4", "--num_workers", "0", "--checkpoint_every", "0",
         "--val_data", "null", "--report_to", "none", "--lr", "1e-2", "--warmup_steps", "0"]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Runs in one process with different precisions: accelerate keeps its state global, reset it around each."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.fixture
def built_models(monkeypatch) -> list:
    """The models ``train`` builds (before accelerate wraps them)."""
    built = []
    real_load = loop.load_model

    def spy(cfg):
        built.append(real_load(cfg))
        return built[-1]

    monkeypatch.setattr(loop, "load_model", spy)
    return built


@pytest.fixture
def loss_calls(monkeypatch) -> list[dict]:
    """Spy on the loss the loop calls: dtype and rows of the embeddings of every micro-batch."""
    calls = []
    real = loop.clip_loss

    def spy(image_embeds, text_embeds, *args, **kwargs):
        calls.append({"dtype": image_embeds.dtype, "rows": image_embeds.shape[0]})
        return real(image_embeds, text_embeds, *args, **kwargs)

    monkeypatch.setattr(loop, "clip_loss", spy)
    return calls


def run(tmp_path: Path, *extra: str) -> Path:
    cfg = TrainConfig.load(ROOT / "configs/tiny_cpu.yaml", [*QUICK, "--output_dir", str(tmp_path / "run"), *extra])
    final = train(cfg)
    model, info = CLIPModel.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert json.loads((final / "config.json").read_text())["architectures"] == ["CLIPModel"]
    return final


def weights(final: Path) -> dict[str, torch.Tensor]:
    return load_file(str(final / "model.safetensors"))


def initial() -> dict[str, torch.Tensor]:
    return tiny_clip(seed=0).state_dict()


def test_bf16_runs_under_cpu_autocast(tmp_path, monkeypatch):
    dtypes = []
    real_load = loop.load_model

    def load_with_hook(cfg):
        model, processor = real_load(cfg)
        model.visual_projection.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
        return model, processor

    monkeypatch.setattr(loop, "load_model", load_with_hook)
    run(tmp_path, "--mixed_precision", "bf16")
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the projection ran in bf16 (weights stay fp32)
    assert all(v.dtype == torch.float32 for v in weights(tmp_path / "run/final").values())  # saved in fp32


def test_fp16_on_cpu_is_refused_before_work(tmp_path):
    with pytest.raises(ConfigError, match="mixed_precision fp16 needs a GPU; on CPU use bf16"):
        run(tmp_path, "--mixed_precision", "fp16")
    assert not (tmp_path / "run/final").exists()


def test_gradient_checkpointing_gives_the_same_weights(tmp_path, built_models):
    built = built_models
    plain = weights(run(tmp_path / "plain"))
    checkpointed = weights(run(tmp_path / "ckpt", "--gradient_checkpointing", "true"))
    assert built[-1][0].is_gradient_checkpointing and not built[0][0].is_gradient_checkpointing
    for key, value in plain.items():  # recomputation is exact on CPU
        torch.testing.assert_close(checkpointed[key], value, atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("method,peft_type", [("lora", "LORA"), ("dora", "LORA"), ("ia3", "IA3")])
def test_peft_methods_save_adapter_and_merged_clip(tmp_path, method, peft_type):
    final = run(tmp_path, "--peft", method, "--peft_r", "4")
    adapter = json.loads((final / "adapter/adapter_config.json").read_text())
    assert adapter["peft_type"] == peft_type
    assert adapter.get("use_dora", False) == (method == "dora")
    start, end = initial(), weights(final)
    changed = [k for k in start if "encoder.layers" in k and not torch.equal(start[k], end[k])]
    assert changed, "merging the trained adapter changed no encoder weight"
    assert torch.equal(start["text_model.embeddings.token_embedding.weight"],
                       end["text_model.embeddings.token_embedding.weight"])  # the base stays frozen


def test_locked_towers_train_only_their_unlocked_layers(tmp_path):
    end = weights(run(tmp_path, "--lock_image", "true", "--lock_image_unlocked_layers", "1",
                      "--lock_text", "true", "--lock_text_unlocked_layers", "1"))
    start = initial()
    same = {k for k in start if torch.equal(start[k], end[k])}
    for tower in ("vision_model", "text_model"):
        assert f"{tower}.encoder.layers.0.mlp.fc1.weight" in same  # locked block
        assert f"{tower}.encoder.layers.1.mlp.fc1.weight" not in same  # the unlocked last block
    assert "vision_model.embeddings.patch_embedding.weight" in same
    assert "visual_projection.weight" not in same and "text_projection.weight" not in same


def test_weighted_mixing_reads_both_sources(tmp_path):
    # The second source's rows all name missing images: its reads show up as skipped "missing_file" samples.
    ghost = tmp_path / "ghost"
    ghost.mkdir()
    (ghost / "captions.csv").write_text("file,caption\n" + "".join(f"nope_{i}.jpg,a ghost {i}\n" for i in range(40)))
    data = (f"[{{path: {SAMPLES / 'captions.csv'}, images: {SAMPLES / 'images'}, weight: 3}}, "
            f"{{path: {ghost / 'captions.csv'}, weight: 1}}]")
    final = run(tmp_path, "--data", data, "--mix_stopping_strategy", "all_exhausted")
    skipped = json.loads((final / "train_results.json").read_text())["skipped_samples"]
    assert skipped.get("missing_file", 0) > 0, skipped


def test_global_batch_size_sets_the_per_process_batch(tmp_path, loss_calls):
    run(tmp_path, "--global_batch_size", "6", "--batch_size", "2")
    assert loss_calls and {c["rows"] for c in loss_calls} == {6}


@pytest.mark.slow
def test_compile_saves_plain_keys(tmp_path):
    final = run(tmp_path, "--compile", "true")
    assert not any(k.startswith("_orig_mod") for k in weights(final))
    start, end = initial(), weights(final)
    assert any(not torch.equal(start[k], end[k]) for k in start)


def test_bare_yaml_no_means_no_mixed_precision(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny\nmixed_precision: no\n")  # YAML 1.1 reads `no` as false
    assert TrainConfig.load(recipe).mixed_precision == "no"
    assert TrainConfig.load(None, ["--mixed_precision", "no"]).mixed_precision == "no"
