"""FSDP2 (full shard, CLIPEncoderLayer wrap) with 2 processes: same losses as DDP, validation on every rank,
a plain CLIP final folder, and a sharded checkpoint that resumes.

On CPU, accelerate (1.15) grants FSDP only on GPU-like backends: asked for FSDP with ``ACCELERATE_USE_CPU=1`` it
silently runs MULTI_CPU (DDP). The trainer refuses that with one error (below); the test then skips, and only when
there is no GPU *and* exactly that error was printed. torch itself runs ``fully_shard`` on gloo once the 0-d
``logit_scale`` is made 1-element (fully_shard refuses scalar parameters), which the trainer does under FSDP.
The one-GPU FSDP check (losses vs a plain run, SIGKILL + sharded resume) is in ``benchmarks/gpu_check.sh``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel

ROOT = Path(__file__).resolve().parents[1]
KNOWN_CPU_ERROR = ("FSDP was requested but accelerate runs MULTI_CPU on cpu: accelerate enables FSDP only on GPUs "
                   "(use DDP on CPU)")
FSDP = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap", "CLIPEncoderLayer", "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
        "--fsdp_reshard_after_forward", "true"]
RUN = ["train.py", "--config", "configs/tiny_cpu.yaml", "--max_steps", "4", "--batch_size", "4", "--num_workers", "0",
       "--checkpoint_every", "2", "--eval_every", "2", "--report_to", "none", "--lr", "1e-3"]


def launch(output: Path, *flags: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", *flags,
           *RUN, "--output_dir", str(output), *extra]
    if "--use_fsdp" not in flags:
        cmd.insert(3, "--multi_gpu")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def results(output: Path) -> dict:
    return json.loads((output / "final/train_results.json").read_text())


@pytest.mark.slow
def test_fsdp_matches_ddp_and_resumes_from_a_sharded_checkpoint(tmp_path):
    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        pytest.skip("2 FSDP processes need 2 GPUs; the one-GPU FSDP check is benchmarks/gpu_check.sh")
    fsdp = launch(tmp_path / "fsdp", *FSDP)
    if fsdp.returncode != 0 and not torch.cuda.is_available() and KNOWN_CPU_ERROR in fsdp.stderr:
        pytest.skip(f"no GPU and accelerate does not run FSDP on CPU: {KNOWN_CPU_ERROR}")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    ddp = launch(tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    run_fsdp, run_ddp = results(tmp_path / "fsdp"), results(tmp_path / "ddp")
    assert (run_fsdp["distributed_type"], run_fsdp["world_size"]) == ("FSDP", 2)
    assert run_ddp["distributed_type"] in ("MULTI_GPU", "MULTI_CPU")
    losses = [[h["loss"] for h in run["history"] if "loss" in h] for run in (run_fsdp, run_ddp)]
    assert len(losses[0]) == 4
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)
    assert sum("val_mR" in h for h in run_fsdp["history"]) == 3  # steps 2 and 4, and the final validation
    CLIPModel.from_pretrained(tmp_path / "fsdp/final")

    # The step-2 sharded checkpoint resumed into a fresh folder ends where the uninterrupted run ended.
    step2 = tmp_path / "fsdp/checkpoints/step_00000002"
    resumed = launch(tmp_path / "resumed", *FSDP, extra=("--resume", str(step2)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(tmp_path / "fsdp/final/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/final/model.safetensors"))
    assert a.keys() == b.keys() and a["logit_scale"].shape == ()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=key)
