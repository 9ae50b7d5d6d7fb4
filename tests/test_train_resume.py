"""A run killed with SIGKILL and resumed with ``--resume latest`` ends with the weights of an uninterrupted run."""

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from modeling_georsclip.training import ConfigError, ResumeError, TrainConfig, train

from conftest import ROOT, subprocess_env

# grad_accum 2, 2 workers, augmentation on, 8 steps over ~3 epochs: every piece of state has to come back.
ARGS = ["--config", "configs/tiny_cpu.yaml", "--max_steps", "8", "--batch_size", "4", "--grad_accum", "2",
        "--checkpoint_every", "3", "--keep_checkpoints", "2", "--val_data", "null", "--report_to", "none"]


def start(output_dir: Path, *extra: str, sleep: float = 0.0) -> subprocess.Popen:
    env = subprocess_env(OMP_NUM_THREADS="1", GEORSCLIP_DEBUG_STEP_SLEEP=str(sleep))
    return subprocess.Popen([sys.executable, "train.py", *ARGS, "--output_dir", str(output_dir), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    reference = start(tmp_path / "ref")
    victim = start(tmp_path / "killed", sleep=0.6)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step_00000003"
    deadline = time.time() + 180
    while not checkpoint.exists():
        assert victim.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "final").exists()

    finish(start(tmp_path / "killed", "--resume", "latest"))
    finish(reference)
    ref = load_file(str(tmp_path / "ref" / "final" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert ref.keys() == resumed.keys()
    changed = [k for k in ref if not (ref[k] == resumed[k]).all()]
    assert changed == [], f"{len(changed)} tensors differ, e.g. {changed[:3]}"
    # ... and training really moved the weights away from the initial tiny model.
    initial = load_file(str(next((tmp_path / "ref" / "checkpoints").iterdir()) / "model.safetensors"))
    assert any(not (initial[k] == ref[k]).all() for k in ref)
    kept = sorted(p.name for p in (tmp_path / "ref" / "checkpoints").iterdir())
    assert kept == ["step_00000003", "step_00000006"]


def test_resume_folder_from_another_model_is_refused_before_work(tmp_path):
    common = ["--output_dir", str(tmp_path / "run"), "--val_data", "null", "--num_workers", "0", "--report_to", "none"]
    train(TrainConfig.load(ROOT / "configs/tiny_cpu.yaml", [*common, "--max_steps", "1", "--checkpoint_every", "1"]))
    cfg = TrainConfig.load(ROOT / "configs/tiny_cpu.yaml", [*common, "--resume", "latest", "--peft", "lora"])
    with pytest.raises(ResumeError, match="different model"):
        train(cfg)


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        TrainConfig.load(ROOT / "configs/tiny_cpu.yaml", ["--learning_rate", "1e-4"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: tiny\nbatchsize: 3\noutput_dir: {tmp_path / 'out'}\n")
    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "train.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--config", str(bad)]) == 2
    assert "unknown key(s) ['batchsize']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_data_is_a_clear_error(tmp_path):
    cfg = TrainConfig.load(ROOT / "configs/tiny_cpu.yaml", ["--output_dir", str(tmp_path / "x"),
                                                            "--data", "[nowhere/captions.csv]"])
    from modeling_georsclip.training.stream import DataError

    with pytest.raises(DataError, match="nowhere/captions.csv does not exist"):
        train(cfg)
    assert not (tmp_path / "x" / "final").exists()
