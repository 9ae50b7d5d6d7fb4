"""train.py --push_to_hub without network: everything is saved first, then one clear error (exit 3)."""

import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env


@pytest.mark.slow
def test_push_without_network_saves_everything_then_fails_clearly(tmp_path):
    env = subprocess_env(HF_HOME=str(tmp_path / "hf"))
    completed = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/tiny_cpu.yaml", "--output_dir", str(tmp_path / "run"),
         "--max_steps", "1", "--num_workers", "0", "--checkpoint_every", "0", "--report_to", "none",
         "--val_data", "null", "--push-to-hub", "me/georsclip-test"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 3, completed.stderr[-2000:]
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "me/georsclip-test" in error_lines[0] and "push it later" in error_lines[0]
    final = tmp_path / "run" / "final"
    for name in ("config.json", "model.safetensors", "README.md", "train_results.json", "training_curves.png"):
        assert (final / name).is_file(), name
