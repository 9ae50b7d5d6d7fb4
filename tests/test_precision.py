"""Inference precisions: resolution per device, fidelity of bf16/int8 to fp32, errors for what a device cannot
run, and the precision fields (run record, precision_check, model-index) written by evaluate."""

import argparse
import json
import logging

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from modeling_georsclip import inference
from modeling_georsclip.data.filters import NOT_RS_PROMPTS, RS_PROMPTS, OutlierScorer
from modeling_georsclip.evaluation import cli, precision_check, zsc
from modeling_georsclip.evaluation.fixtures import SAMPLES, make_eval_fixture
from modeling_georsclip.inference import PrecisionError, load_model, prepare_for_inference, resolve_precision
from modeling_georsclip.processing import GeoRSCLIPProcessor
from modeling_georsclip.testing import save_tiny_clip, tiny_clip

CAPTIONS = ["many yellow buses in a parking lot", "an airport with two runways", "a river next to farmland",
            "a stadium with a green field", "boats in a harbor"]
# Measured on the fixtures (tiny: width 64, 224 px; B-32: random ViT-B-32): bf16 >= 0.9999 / int8 images >= 0.9994.
BF16_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.995


@pytest.fixture(scope="module")
def images():
    names = ["remoteclip__airport.jpg", "sahi__boats.jpg", "cliprsicd__stadium_1.jpg", "retrievalsys__00013.jpg"]
    return [Image.open(SAMPLES / "images" / name).convert("RGB") for name in names]


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("prec")
    return base, make_eval_fixture(base / "data"), save_tiny_clip(base / "tiny", image_size=64, patch_size=16)


def _min_cosines(model, images, processor):
    """(image, text) min cosine of each precision's embeddings to fp32's (unit vectors: dot = cosine)."""
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    ref_img, ref_txt = model.image_embeddings(pixels), model.text_embeddings(CAPTIONS, processor)
    out = {}
    for precision in ("bf16", "int8"):
        prepared = prepare_for_inference(model, precision, "cpu")
        img, txt = prepared.image_embeddings(pixels), prepared.text_embeddings(CAPTIONS, processor)
        assert img.dtype == txt.dtype == torch.float32 and img.device.type == "cpu"
        assert prepared.inference_precision == precision
        out[precision] = (float((img * ref_img).sum(-1).min()), float((txt * ref_txt).sum(-1).min()))
        prepare_for_inference(model, "fp32")  # back to plain fp32 for the next precision
    assert model.inference_precision == "fp32"
    assert type(model.vision_model.encoder.layers[0].mlp.fc1) is torch.nn.Linear  # int8 quantized a copy
    return out


def _assert_close_to_fp32(cosines):
    assert min(cosines["bf16"]) >= BF16_MIN_COSINE, cosines
    assert min(cosines["int8"]) >= INT8_MIN_COSINE, cosines
    image_cosines = [cosines["bf16"][0], cosines["int8"][0], cosines["bf16"][1]]
    assert max(image_cosines) < 1.0 - 1e-7, "a reduced precision gave fp32's exact output"
    assert cosines["int8"][1] > 1.0 - 1e-6, "int8 quantizes the image tower only: captions stay fp32"


def test_bf16_and_int8_agree_with_fp32_on_a_tiny_model(images):
    model = tiny_clip(image_size=224, patch_size=32, width=64)
    _assert_close_to_fp32(_min_cosines(model, images, GeoRSCLIPProcessor.default(224)))


@pytest.mark.slow
def test_bf16_and_int8_agree_with_fp32_on_a_vit_b32_sized_model(images):
    from transformers import CLIPConfig

    from modeling_georsclip import GeoRSCLIPModel

    text = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu")
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=32, hidden_act="quick_gelu")
    torch.manual_seed(0)
    model = GeoRSCLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).eval()
    _assert_close_to_fp32(_min_cosines(model, images, GeoRSCLIPProcessor.default(224)))


def test_int8_model_is_quantized_and_cannot_go_back():
    quantized = prepare_for_inference(tiny_clip(), "int8", "cpu")
    int8_linear = torch.ao.nn.quantized.dynamic.Linear
    assert isinstance(quantized.vision_model.encoder.layers[0].self_attn.q_proj, int8_linear)
    assert isinstance(quantized.visual_projection, int8_linear)
    assert type(quantized.text_model.encoder.layers[0].self_attn.q_proj) is torch.nn.Linear  # captions stay fp32
    with pytest.raises(PrecisionError, match="int8.*fp32"):
        prepare_for_inference(quantized, "fp32")


@pytest.mark.parametrize(("precision", "device"), [("fp16", "cpu"), ("int8", "cuda"), ("fp16", "cpu:0")])
def test_a_precision_the_device_cannot_run_names_both(precision, device):
    with pytest.raises(PrecisionError) as err:
        resolve_precision(precision, device)
    assert precision in str(err.value) and torch.device(device).type in str(err.value)


def test_bf16_on_a_gpu_without_bf16_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(PrecisionError, match="bf16.*cuda.*Tesla T4"):
        resolve_precision("bf16", "cuda")
    assert resolve_precision("auto", "cuda") == "fp32"
    assert resolve_precision("fp16", "cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", "cuda") == resolve_precision("bf16", "cuda") == "bf16"


def test_auto_follows_the_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    real_path = inference.Path
    monkeypatch.setattr(inference, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n")
    assert resolve_precision("auto", "cpu") == "fp32"  # AVX512 without BF16: emulated bf16 is slower
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert resolve_precision("auto", "cpu") == "bf16"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("int8", "cpu") == "int8" and resolve_precision("fp32", "cpu") == "fp32"


def test_load_model_in_each_precision(eval_setup):
    _, _, model_dir = eval_setup
    model, _ = load_model(model_dir, "cpu", "bf16")
    assert model.inference_precision == "bf16" and next(model.parameters()).dtype == torch.float32
    with pytest.raises(PrecisionError, match="fp16.*cpu"):
        load_model(model_dir, "cpu", "fp16")


def test_cli_precision_errors_exit_2(eval_setup, capsys):
    base, data, model_dir = eval_setup
    code = cli.main(["--model", str(model_dir), "--data-root", str(data["root"]), "--tasks", "zsc",
                     "--precision", "fp16", "--output", str(base / "never.json"), "--no-card"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: precision fp16 cannot run on device cpu" in err
    assert not (base / "never.json").exists()
    with pytest.raises(SystemExit) as exit_info:
        zsc.main(["--model", str(model_dir), "--data", str(data["zsc"]), "--precision", "fp16"])
    assert exit_info.value.code == 2 and "error: precision fp16" in capsys.readouterr().err


def test_add_precision_argument_check_flag_only_where_asked():
    plain, checked = argparse.ArgumentParser(), argparse.ArgumentParser()
    inference.add_precision_argument(plain, "auto")
    inference.add_precision_argument(checked, check=True)
    assert plain.parse_args([]).precision == "auto" and not hasattr(plain.parse_args([]), "check_precision")
    assert vars(checked.parse_args(["--check-precision", "7"])) == {"precision": "fp32", "check_precision": 7}


def _evaluate(base, data, model_dir, name, *extra):
    out = base / name / "results.json"
    code = cli.main(["--model", str(model_dir), "--data-root", str(data["root"]), "--output", str(out), *extra])
    assert code == 0
    document = json.loads(out.read_text())
    runs = document["runs"] if "runs" in document else [document]
    assert len(runs) == 1
    return out, runs[0]


def test_results_record_precision_and_check(eval_setup, caplog):
    base, data, model_dir = eval_setup
    logging.getLogger("georsclip").addHandler(caplog.handler)
    try:
        out, run = _evaluate(base, data, model_dir, "bf16", "--tasks", "zsc,retrieval", "--precision", "bf16",
                             "--check-precision", "4")
    finally:
        logging.getLogger("georsclip").removeHandler(caplog.handler)
    assert run["precision"] == "bf16" and run["settings"]["precision"] == "bf16"
    check = run["precision_check"]
    assert check["n"] == 4 and check["n_images"] == 4 and check["n_captions"] == 4
    assert BF16_MIN_COSINE <= check["min_cosine"] <= check["mean_cosine"] < 1.0
    assert 0.0 <= check["top1_agreement"] <= 1.0
    assert "min cosine" in caplog.text
    card = ModelCard.load(model_dir / "README.md")
    bf16_rows = [r for r in card.data.eval_results if r.metric_args == {"precision": "bf16"}]
    assert bf16_rows and all(r.metric_name.endswith("[bf16]") for r in bf16_rows)
    assert "[bf16]" in out.with_suffix(".md").read_text()


def test_int8_check_without_zero_shot_and_low_cosine_warning(eval_setup, caplog, monkeypatch):
    base, data, model_dir = eval_setup
    monkeypatch.setattr(precision_check, "MIN_COSINE", 1.01)  # every real run is below it: the warning path
    logging.getLogger("georsclip").addHandler(caplog.handler)
    try:
        _, run = _evaluate(base, data, model_dir, "int8", "--tasks", "retrieval,selo", "--precision", "int8",
                           "--check-precision", "3", "--no-card")
    finally:
        logging.getLogger("georsclip").removeHandler(caplog.handler)
    check = run["precision_check"]
    assert run["precision"] == "int8" and check["top1_agreement"] is None
    assert INT8_MIN_COSINE <= check["min_cosine"] < 1.0
    assert any(r.levelno == logging.WARNING and "int8 embeddings reach only min cosine" in r.getMessage()
               for r in caplog.records)


def test_fp32_is_the_default_and_unchecked(eval_setup):
    base, data, model_dir = eval_setup
    _, run = _evaluate(base, data, model_dir, "fp32", "--tasks", "zsc", "--no-card")
    assert run["precision"] == "fp32" and run["precision_check"] is None


def test_outlier_scorer_in_int8_and_bf16_stays_close_to_fp32(images):
    model, processor = tiny_clip(image_size=224, patch_size=32, width=64), GeoRSCLIPProcessor.default(224)
    fp32 = OutlierScorer(model=model, processor=processor, positive=RS_PROMPTS, negative=NOT_RS_PROMPTS)(images)
    for precision in ("int8", "bf16"):
        scorer = OutlierScorer(model=model, processor=processor, precision=precision)
        assert scorer.precision == precision
        difference = abs(scorer(images) - fp32).max()
        assert 0 < difference < 0.03  # tiny random model: int8 moves P(RS) ~0.017 here, bf16 less
        prepare_for_inference(model, "fp32")


def test_builder_outlier_filter_precision(tmp_path, capsys):
    from modeling_georsclip.data.build import main as build_main

    model_dir = save_tiny_clip(tmp_path / "tiny")
    common = ["--captions", str(SAMPLES / "captions.csv"), "--images", str(SAMPLES / "images"), "--config", "rs3",
              "--split", "train", "--filters", "outlier", "--outlier-model", str(model_dir),
              "--outlier-threshold", "0.0"]
    assert build_main([*common, "--output", str(tmp_path / "never"), "--precision", "fp16"]) == 2
    assert "error: --outlier-model: precision fp16 cannot run on device cpu" in capsys.readouterr().err
    assert build_main([*common, "--output", str(tmp_path / "int8"), "--precision", "int8"]) == 0
    report = json.loads((tmp_path / "int8" / "build_reports" / "rs3-train.json").read_text())
    assert report["outlier_precision"] == "int8" and report["rows"] > 0


def test_int8_patch_embedding_matches_the_convolution_it_replaces():
    """The int8 patch embedding is the conv's matmul: same shape (remainder pixels dropped), values within
    int8 rounding; and quantize_int8 swaps it into the image tower."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 48, kernel_size=16, stride=16, bias=False)
    pixels = torch.randn(4, 3, 70, 66)  # 70 and 66 are not multiples of 16: the conv drops the remainder
    with torch.no_grad():
        expected, got = conv(pixels), inference.Int8PatchEmbedding(conv)(pixels)
    assert got.shape == expected.shape == (4, 48, 4, 4)
    # int8 rounding of white-noise input costs ~2 %; a wrong patch layout would cost ~140 %
    assert float((got - expected).norm() / expected.norm()) < 0.05
    assert not inference.Int8PatchEmbedding.supports(torch.nn.Conv2d(3, 8, kernel_size=16, stride=8))
    quantized = prepare_for_inference(tiny_clip(), "int8", "cpu")
    assert isinstance(quantized.vision_model.embeddings.patch_embedding, inference.Int8PatchEmbedding)


def test_load_model_quantizes_in_place_and_prepare_keeps_the_caller_model(tmp_path):
    """load_model owns its model, so int8 replaces it (no second fp32 copy); prepare_for_inference copies."""
    model = tiny_clip()
    assert prepare_for_inference(model, "int8", "cpu") is not model
    assert type(model.vision_model.encoder.layers[0].mlp.fc1) is torch.nn.Linear  # the caller's model untouched
    same = tiny_clip()
    assert prepare_for_inference(same, "int8", "cpu", inplace=True) is same
    assert isinstance(same.vision_model.encoder.layers[0].mlp.fc1, torch.ao.nn.quantized.dynamic.Linear)
    loaded, _ = load_model(save_tiny_clip(tmp_path / "tiny"), precision="int8")
    assert isinstance(loaded.vision_model.encoder.layers[0].mlp.fc1, torch.ao.nn.quantized.dynamic.Linear)
