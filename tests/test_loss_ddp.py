"""Global-batch CLIP loss: 2 CPU processes with batch b == 1 process with batch 2b (loss and every gradient)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from ddp_loss_script import batch, loss_and_grads  # noqa: E402

from modeling_georsclip.testing import tiny_clip  # noqa: E402

from conftest import ROOT, subprocess_env  # noqa: E402

PER_RANK = 4

pytestmark = pytest.mark.slow  # an accelerate launch of 2 processes


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> Path:
    """One 2-process launch computes both loss variants (launching is most of the cost)."""
    out = tmp_path_factory.mktemp("ddp")
    env = subprocess_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(ROOT / "tests" / "ddp_loss_script.py"), str(out), str(PER_RANK)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("mode", ["local", "full"])
def test_two_processes_equal_one_process_with_double_batch(ddp_results, mode):
    ddp = load_file(str(ddp_results / f"ddp_{mode}.safetensors"))
    # A GPU-less `accelerate launch` can silently start independent single-process runs: check it did not.
    assert int(ddp["world_size"]) == 2 and int(ddp["distributed"]) == 1

    model = tiny_clip(seed=0).train()
    pixels, ids = batch(2 * PER_RANK)
    ref_loss = loss_and_grads(model, model.logit_scale, pixels, ids, mode == "local", lambda loss: loss.backward())
    torch.testing.assert_close(ddp["loss"], ref_loss.detach().reshape(1), atol=1e-5, rtol=1e-5)
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    ddp_grads = {k.removeprefix("grad."): v for k, v in ddp.items() if k.startswith("grad.")}
    assert set(ddp_grads) == set(ref_grads)
    assert "logit_scale" in ddp_grads and ref_grads["logit_scale"].abs().item() > 0
    for name, grad in ref_grads.items():
        torch.testing.assert_close(ddp_grads[name], grad, atol=2e-5, rtol=1e-4, msg=name)
