"""Where a real training step's time goes: data wait / forward / backward / optimizer / the rest.

    PYTHONPATH=. python benchmarks/train_step.py [--config tiny_cpu] [--steps 60] [--workers 2] [--key value ...]
    ACCELERATE_USE_CPU=1 PYTHONPATH=. accelerate launch --multi_gpu --num_processes 2 benchmarks/train_step.py

It runs ``training.train`` itself (not a copy of its loop) with a ``StepTimer`` that the loop marks after each
phase; logging (TensorBoard, every step) and checkpointing (``--checkpoint_every``, default every 20 steps) stay on,
and their cost lands in "rest" with the loop's own bookkeeping. Warm-up steps (worker start, first calls) are
left out. Goal (issues 9/10): rest < 10 % of a step on the tiny CPU config, for 1 and 2 processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


def _repeated_csv(spec, repeat: int, folder: Path) -> dict:
    """The tiny config's 25 vendored pairs repeated, so that steps measure steady state, not epoch restarts."""
    if spec.resolved_kind() != "csv" or repeat <= 1:
        return dataclasses.asdict(spec)
    lines = Path(spec.path).read_text().splitlines()
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"captions-{os.environ.get('RANK', '0')}.csv"
    out.write_text("\n".join([lines[0], *lines[1:] * repeat]) + "\n")
    images = spec.images or str(Path(spec.path).parent)
    return {"path": str(out), "images": str(Path(images).resolve())}


def measure(config: str, steps: int, warmup: int, overrides: list[str], repeat: int, folder: Path) -> dict:
    from modeling_georsclip.resources import resolve_config
    from modeling_georsclip.training import TrainConfig, train
    from modeling_georsclip.training.stream import SourceSpec
    from modeling_georsclip.training.timing import StepTimer

    cfg = TrainConfig.load(str(resolve_config(config)), [
        "--max_steps", str(steps + warmup), "--output_dir", str(folder / "run"), "--val_data", "null",
        "--log_every", "1", "--report_to", "tensorboard", "--checkpoint_every", "20", *overrides])
    cfg.data = [_repeated_csv(SourceSpec.from_any(source), repeat, folder) for source in cfg.data]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else None
    timer = StepTimer(sync=sync, skip_steps=warmup)
    train(cfg, step_timer=timer)
    result = timer.report()
    result["steps_timed"] = steps
    result["samples_per_s_per_process"] = cfg.batch_size * 1000 / result["step_ms"]
    compute_ms = result["forward_ms"] + result["backward_ms"] + result["optimizer_ms"]
    result["compute_only_samples_per_s_per_process"] = cfg.batch_size * 1000 / compute_ms
    result["batch_size"] = cfg.batch_size
    result["processes"] = int(os.environ.get("WORLD_SIZE", "1"))
    result["checkpoint_every"] = cfg.checkpoint_every
    result["logging"] = f"{cfg.report_to} every {cfg.log_every} step(s)"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny_cpu", help="packaged recipe name or YAML path")
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=40, help="repeat a CSV source's rows (steady state)")
    parser.add_argument("--json", help="also write the figures of the main process here")
    args, overrides = parser.parse_known_args()
    from modeling_georsclip.training import ConfigError
    from modeling_georsclip.training.stream import DataError
    # Every process of one launch must write into the same folder: they share their parent (the launcher).
    # (No accelerate state may be created before train() builds its Accelerator from the launch environment.)
    folder = Path(tempfile.gettempdir()) / f"georsclip-train-step-{os.getppid()}"
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        result = measure(args.config, args.steps, args.warmup, ["--num_workers", str(args.workers), *overrides],
                         args.repeat, folder)
    except (ConfigError, DataError) as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        if main_process:
            shutil.rmtree(folder, ignore_errors=True)
    if not main_process:
        return
    print(f"train step breakdown ({result['processes']} process(es), {args.workers} workers, "
          f"{result['steps_timed']} steps, checkpoint every {result['checkpoint_every']}, logging: {result['logging']})")
    for phase in ("data_wait", "forward", "backward", "optimizer", "rest"):
        print(f"  {phase:10s} {result[f'{phase}_ms']:8.2f} ms  {100 * result[f'{phase}_frac']:5.1f} %")
    print(f"  {'step':10s} {result['step_ms']:8.2f} ms  ({result['samples_per_s_per_process']:.0f} samples/s "
          "per process)")
    print(f"  forward+backward+optimizer alone: {result['compute_only_samples_per_s_per_process']:.0f} samples/s "
          f"per process (batch {result['batch_size']} per process)")
    verdict = "meets" if result["rest_frac"] < 0.10 else "MISSES"
    print(f"rest = {100 * result['rest_frac']:.1f} % of a step: {verdict} the < 10 % goal")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
