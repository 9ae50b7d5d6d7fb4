"""A checkpoint resumes only with the process and worker counts it was written with; otherwise one error, no work.

The data position is saved per process and per dataloader worker (each reads its own shards), so continuing the
epoch on another layout would repeat or skip samples: the trainer refuses, naming both values.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_georsclip.training import ResumeError, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--val_data", "null", "--report_to", "none", "--batch_size", "4", "--checkpoint_every", "1"]


def checkpoints(output: Path) -> list[str]:
    return sorted(p.name for p in (output / "checkpoints").iterdir())


def test_resume_with_another_worker_count_is_refused(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig.load(ROOT / "configs/tiny_cpu.yaml",
                           [*COMMON, "--output_dir", str(out), "--max_steps", "1", "--num_workers", "0"]))
    before = checkpoints(out)
    cfg = TrainConfig.load(ROOT / "configs/tiny_cpu.yaml", [*COMMON, "--output_dir", str(out), "--max_steps", "3",
                                                            "--num_workers", "1", "--resume", "latest"])
    with pytest.raises(ResumeError, match=r"written with 0 dataloader workers \(num_workers\); this run has 1"):
        train(cfg)
    assert checkpoints(out) == before  # nothing new was trained or written


@pytest.mark.slow
def test_resume_with_another_world_size_is_refused(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "train.py", "--config", "configs/tiny_cpu.yaml", *COMMON, "--output_dir", str(out), "--max_steps", "1",
           "--num_workers", "0", "--eval_every", "1",  # validation runs on both processes, the main one logs
           "--val_data", "{path: samples/rs-samples/captions.csv, images: samples/rs-samples/images}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "final/train_results.json").read_text())
    assert (summary["distributed_type"], summary["world_size"]) == ("MULTI_CPU", 2)
    assert [h["step"] for h in summary["history"] if "val_mR" in h] == [1, 1]  # step 1, then the final one
    before = checkpoints(out)
    cfg = TrainConfig.load(ROOT / "configs/tiny_cpu.yaml", [*COMMON, "--output_dir", str(out), "--max_steps", "3",
                                                            "--num_workers", "0", "--resume", "latest"])
    with pytest.raises(ResumeError, match=r"written with 2 processes \(world_size\); this run has 1"):
        train(cfg)
    assert checkpoints(out) == before
