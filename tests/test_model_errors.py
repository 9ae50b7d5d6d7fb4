"""A bad model path (missing folder, no config.json, corrupt weights) is one ``error:`` line and exit 2 in
every command that loads a model, never a transformers/safetensors traceback."""

from __future__ import annotations

import pytest

from modeling_georsclip import train
from modeling_georsclip.data.build import main as build_main
from modeling_georsclip.evaluation import cli, zsc
from modeling_georsclip.inference import ModelLoadError, load_model
from modeling_georsclip.testing import save_tiny_clip

CASES = ("missing", "no-config", "corrupt-weights")


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-models")
    no_config = save_tiny_clip(root / "no-config")
    (no_config / "config.json").unlink()
    corrupt = save_tiny_clip(root / "corrupt-weights")
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short
    return {"missing": str(root / "missing"), "no-config": str(no_config), "corrupt-weights": str(corrupt)}


EXPECTED = {"missing": "model folder not found", "no-config": "has no config.json", "corrupt-weights": "cannot load model"}


def _one_error_line(capsys, path: str, case: str) -> None:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert path in errors[0] and EXPECTED[case] in errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("case", CASES)
def test_load_model_raises_model_load_error(bad_models, case):
    with pytest.raises(ModelLoadError, match=EXPECTED[case]):
        load_model(bad_models[case])


@pytest.mark.parametrize("case", CASES)
def test_evaluate_bad_model_is_one_error_line(bad_models, case, tmp_path, capsys):
    (tmp_path / "data" / "zsc" / "scenes").mkdir(parents=True)
    out = tmp_path / "results.json"
    code = cli.main(["--model", bad_models[case], "--data-root", str(tmp_path / "data"), "--tasks", "zsc",
                     "--output", str(out)])
    assert code == 2
    _one_error_line(capsys, bad_models[case], case)
    assert not out.exists()


@pytest.mark.parametrize("case", CASES)
def test_zero_shot_cli_bad_model_exits_2(bad_models, case, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        zsc.main(["--model", bad_models[case], "--data", str(tmp_path)])
    assert exit_info.value.code == 2
    _one_error_line(capsys, bad_models[case], case)


@pytest.mark.parametrize("case", CASES)
def test_train_bad_model_is_one_error_line(bad_models, case, tmp_path, capsys):
    code = train.main(["--config", "tiny_cpu", "--model", bad_models[case], "--output_dir", str(tmp_path / "run")])
    assert code == 2
    _one_error_line(capsys, bad_models[case], case)
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("case", CASES)
def test_builder_outlier_model_is_one_error_line(bad_models, case, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    captions = tmp_path / "captions.csv"
    captions.write_text("file,caption\n", encoding="utf-8")
    code = build_main(["--captions", str(captions), "--images", str(tmp_path / "images"), "--config", "pub11", "--split", "train",
                       "--output", str(tmp_path / "out"), "--filters", "invalid,outlier",
                       "--outlier-model", bad_models[case]])
    assert code == 2
    _one_error_line(capsys, bad_models[case], case)
