"""The real ``train.py`` under ``accelerate launch`` with 2 CPU processes (gloo), as users run it on GPUs.

- a 2-process run validates (mid-run and at the end), checkpoints and saves a plain CLIP;
- its process group SIGKILLed after a checkpoint that lies inside an epoch *and* inside a shuffle block, then
  resumed with ``--resume latest``, ends with the weights of the uninterrupted run;
- two "machines" on localhost (``--num_machines 2``, one process each) end with the weights of one machine with
  two processes.

All launches of the module start together (the 2-core CI box overlaps their imports) and every subprocess runs
in its own process group, bounded by a timeout and killed as a group on failure.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "modeling_georsclip" / "samples" / "rs-samples"
TIMEOUT = 300  # seconds, per launch (an idle 2-core machine needs ~40 s)

# 64 rows in 64 one-row CSV shards -> 32 per process, 16 per dataloader worker (2 workers); batch 2 -> 8 batches
# per worker, 16 steps per epoch. shuffle_buffer 5 -> worker blocks of 5, 5, 5, 1 rows. The only checkpoint
# before the end is step 12: each worker has emitted 6 batches = 12 rows -> block 2, position 2 (of 5): inside
# epoch 0 and inside a block on every worker of every process. Steps 13-20 cross into epoch 1.
ROWS, BATCH, BUFFER, WORKERS, PROCESSES = 64, 2, 5, 2, 2
ROWS_PER_WORKER = ROWS // (PROCESSES * WORKERS)
MAX_STEPS, CHECKPOINT_EVERY, EVAL_EVERY = 20, 12, 7


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_data(folder: Path) -> Path:
    """64 pairs made from the vendored real RS images (downscaled: decoding is not what is tested here)."""
    with open(SAMPLES / "captions.csv", newline="") as handle:
        samples = list(csv.DictReader(handle))
    images = folder / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(ROWS):
        sample = samples[i % len(samples)]
        with Image.open(SAMPLES / "images" / sample["file"]) as img:
            small = img.convert("RGB").resize((48, 48)).rotate(90 * (i // len(samples)))
        small.save(images / f"pair_{i:02d}.jpg", quality=90)
        rows.append({"file": f"pair_{i:02d}.jpg", "caption": f"{sample['caption']} ({i})"})
    path = folder / "captions.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path


class Launch:
    """One ``accelerate launch ... train.py`` in its own process group."""

    def __init__(self, name: str, output_dir: Path, data: Path, launch_args: list[str], *extra: str,
                 step_sleep: float = 0.0):
        source = f"{{path: {data}, images: {data.parent / 'images'}}}"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no",
               "--dynamo_backend", "no", *launch_args, "train.py", "--config", "tiny_cpu",
               "--data", f"[{source}]", "--val_data", source, "--batch_size", str(BATCH),
               "--shuffle_buffer", str(BUFFER), "--num_workers", str(WORKERS), "--max_steps", str(MAX_STEPS),
               "--checkpoint_every", str(CHECKPOINT_EVERY), "--keep_checkpoints", "5",
               "--eval_every", str(EVAL_EVERY), "--report_to", "none", "--output_dir", str(output_dir), *extra]
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "GEORSCLIP_DEBUG_STEP_SLEEP": str(step_sleep)}
        self.name = name
        self.log = output_dir.parent / f"{name}.log"
        self._log_handle = open(self.log, "w")  # noqa: SIM115 (closed in wait/kill)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log_handle, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.started = time.perf_counter()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        self._log_handle.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait(self, timeout: float = TIMEOUT) -> float:
        """Wait for success (fails with the log tail otherwise); returns the wall time since the start."""
        try:
            self.proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - self.started)))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} ran past {timeout} s:\n{self.tail()}")
        self._log_handle.close()
        assert self.proc.returncode == 0, f"{self.name} failed:\n{self.tail()}"
        return time.perf_counter() - self.started


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start the uninterrupted 2-process reference and the two-machine pair at once (in the background)."""
    tmp = tmp_path_factory.mktemp("ddp_train")
    data = write_data(tmp / "data")
    one = ["--num_machines", "1", "--num_processes", str(PROCESSES), "--main_process_port", str(free_port())]
    launches = {"reference": Launch("reference", tmp / "reference", data, one)}
    port = free_port()
    for rank in (0, 1):  # a shared output folder, as on a cluster file system
        nodes = ["--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                 "--main_process_port", str(port), "--num_processes", "2"]
        launches[f"machine{rank}"] = Launch(f"machine{rank}", tmp / "two_machines", data, nodes)
    try:
        yield {"tmp": tmp, "data": data, "launches": launches}
    finally:
        for launch in launches.values():
            launch.kill()


def final_weights(output_dir: Path) -> dict:
    return load_file(str(output_dir / "final" / "model.safetensors"))


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    changed = [k for k in expected if not (expected[k] == actual[k]).all()]
    assert changed == [], f"{len(changed)} tensors differ, e.g. {changed[:3]}"


def worker_positions(checkpoint: Path) -> dict[str, dict]:
    """Every process's every dataloader worker's stream position saved in ``checkpoint`` (rank/worker -> state)."""
    files = sorted(checkpoint.glob("data_state_rank*.json"))
    assert len(files) == PROCESSES, f"{checkpoint}: data states {[f.name for f in files]}"
    positions = {}
    for file in files:
        saved = json.loads(file.read_text())
        snapshots = saved["loader"]["_snapshot"]["_worker_snapshots"]
        assert len(snapshots) == WORKERS
        for worker, snapshot in snapshots.items():
            positions[f"{file.stem}/{worker}"] = snapshot["dataset_state"]
    return positions


@pytest.mark.slow
def test_sigkill_mid_epoch_mid_block_then_resume_gives_identical_weights(runs):
    tmp, data = runs["tmp"], runs["data"]
    out = tmp / "killed"
    port = ["--num_machines", "1", "--num_processes", str(PROCESSES)]
    # The step sleep widens the window between the step-12 checkpoint and the end (8 steps) for the kill.
    victim = Launch("victim", out, data, [*port, "--main_process_port", str(free_port())], step_sleep=0.5)
    try:
        checkpoint = out / "checkpoints" / f"step_{CHECKPOINT_EVERY:08d}"
        deadline = time.time() + TIMEOUT
        while not checkpoint.exists():
            assert victim.proc.poll() is None, f"the run ended before it could be killed:\n{victim.tail()}"
            assert time.time() < deadline, f"no checkpoint appeared:\n{victim.tail()}"
            time.sleep(0.05)
        os.killpg(victim.proc.pid, signal.SIGKILL)  # the whole process group: launcher, both ranks, workers
    finally:
        victim.kill()
    assert victim.proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists()

    # The checkpoint `--resume latest` picks is inside epoch 0 and inside a shuffle block on every worker.
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert checkpoints == [checkpoint.name]
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert (trainer_state["step"], trainer_state["epoch"]) == (CHECKPOINT_EVERY, 0)
    positions = worker_positions(checkpoint)
    for where, state in positions.items():
        assert state.get("epoch") == 0 and not state.get("fresh") and not state.get("done"), (where, state)
        assert 0 < state["pos"] < BUFFER, f"{where} is on a shuffle-block boundary: {state}"
        consumed = state["block"] * BUFFER + state["pos"]
        assert 0 < consumed < ROWS_PER_WORKER, f"{where} is on an epoch boundary: {state}"
        assert state["hf_state"] is not None, f"{where}: no datasets position to resume from: {state}"

    resumed = Launch("resumed", out, data, [*port, "--main_process_port", str(free_port())], "--resume", "latest")
    try:
        resumed.wait()
        runs["launches"]["reference"].wait()
    finally:
        resumed.kill()
    assert "resumed from" in resumed.log.read_text(errors="replace")
    assert_same_weights(final_weights(tmp / "reference"), final_weights(out))
    summary = json.loads((out / "final" / "train_results.json").read_text())
    assert summary["steps"] == MAX_STEPS and summary["epochs_started"] == 2


@pytest.mark.slow
def test_two_process_run_validates_checkpoints_and_saves(runs):
    from transformers import CLIPModel

    out = runs["tmp"] / "reference"
    runs["launches"]["reference"].wait()
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == [f"step_{CHECKPOINT_EVERY:08d}"]  # no temp folder of an interrupted save left behind
    checkpoint = out / "checkpoints" / kept[0]
    assert {f"random_states_{r}.pkl" for r in range(PROCESSES)} <= {p.name for p in checkpoint.iterdir()}
    assert len(worker_positions(checkpoint)) == PROCESSES * WORKERS

    summary = json.loads((out / "final" / "train_results.json").read_text())
    assert summary["steps"] == MAX_STEPS
    validations = [h for h in summary["history"] if "val_mR" in h]
    steps = [h["step"] for h in validations]
    assert steps[:2] == [EVAL_EVERY, 2 * EVAL_EVERY] and steps[-1] == MAX_STEPS  # every eval_every, and at the end
    assert set(summary["final_validation"]) >= {"i2t_R@1", "t2i_R@1", "mR"}
    assert 0 <= summary["final_validation"]["mR"] <= 100
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert len(losses) == MAX_STEPS

    model = CLIPModel.from_pretrained(out / "final")  # a plain CLIP checkpoint, the trained weights
    initial = load_file(str(checkpoint / "model.safetensors"))
    trained = final_weights(out)
    assert any(not (initial[k] == trained[k]).all() for k in trained)
    assert model.logit_scale.item() == pytest.approx(trained["logit_scale"].item())


@pytest.mark.slow
def test_two_machines_one_process_each_equal_one_machine_with_two(runs):
    launches = runs["launches"]
    for name in ("machine0", "machine1", "reference"):
        launches[name].wait()
    out = runs["tmp"] / "two_machines"
    # Both machines took part in one process group (not two independent single-process runs).
    checkpoint = out / "checkpoints" / f"step_{CHECKPOINT_EVERY:08d}"
    assert {f"random_states_{r}.pkl" for r in range(PROCESSES)} <= {p.name for p in checkpoint.iterdir()}
    assert len(worker_positions(checkpoint)) == PROCESSES * WORKERS
    assert_same_weights(final_weights(runs["tmp"] / "reference"), final_weights(out))


def test_slurm_script_starts_one_launcher_per_node_with_its_rank(tmp_path):
    """scripts/slurm/train_multinode.sbatch under stub srun/scontrol: the launcher arguments each node gets."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        # srun on 3 nodes: the same command once per node, with that node's SLURM_NODEID
        "srun": 'while [[ "$1" == --* ]]; do shift; done\n'
                'for node in 0 1 2; do SLURM_NODEID=$node "$@" || exit 1; done\n',
        "scontrol": 'echo gpu-node-17; echo gpu-node-18; echo gpu-node-19\n',
        "fake-launch": 'python3 -c "import json, os, sys; print(json.dumps(sys.argv[1:]))" "$@" '
                       '>> "$CALLS"\n',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "3",
           "SLURM_JOB_NODELIST": "gpu-node-[17-19]", "SLURM_JOB_NAME": "rs5m", "SLURM_SUBMIT_DIR": str(ROOT),
           "GPUS_PER_NODE": "4", "LAUNCHER": "fake-launch", "CALLS": str(tmp_path / "calls.jsonl")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "train_multinode.sbatch"), "--lr", "1e-4"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 3
    for rank, args in enumerate(calls):
        options = dict(zip(args[1:11:2], args[2:11:2], strict=True))
        assert args[0] == "--multi_gpu"
        assert options == {"--num_machines": "3", "--machine_rank": str(rank), "--num_processes": "12",
                           "--main_process_ip": "gpu-node-17", "--main_process_port": "29500"}
        assert args[11:] == [str(ROOT / "train.py"), "--config", "ret2", "--output_dir", "runs/rs5m",
                             "--resume", "latest", "--lr", "1e-4"]
