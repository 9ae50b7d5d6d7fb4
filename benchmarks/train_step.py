"""Time per training step split into data wait / forward / backward / optimizer, and samples/s.

    PYTHONPATH=. python benchmarks/train_step.py [--config configs/tiny_cpu.yaml] [--steps 40] [--workers 2]

Uses the trainer's own pieces (model set-up, streaming loader with augmentation, global-batch loss, AdamW, schedule,
grad clipping, logit-scale clamp) under ``accelerate``. Goals (issue 4): data wait < 10 % of the step with 2 workers,
and everything beyond forward + backward + optimizer < 10 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch


def _repeated_csv(spec, repeat: int) -> dict:
    """The tiny config's 25 vendored pairs repeated, so that steps measure steady state, not epoch restarts."""
    if spec.resolved_kind() != "csv" or repeat <= 1:
        return dataclasses.asdict(spec)
    lines = Path(spec.path).read_text().splitlines()
    out = Path(tempfile.mkdtemp()) / "captions.csv"
    out.write_text("\n".join([lines[0], *lines[1:] * repeat]) + "\n")
    images = spec.images or str(Path(spec.path).parent)
    return {"path": str(out), "images": str(Path(images).resolve())}


def measure(config: str, steps: int, workers: int, overrides: list[str], repeat: int = 40) -> dict[str, float]:
    from accelerate import Accelerator

    from modeling_georsclip.training.augment import transform_for_processor
    from modeling_georsclip.training.config import TrainConfig
    from modeling_georsclip.training.loop import _clip_core, load_model, prepare_trainable, set_cpu_threads
    from modeling_georsclip.training.loss import clamp_logit_scale_, clip_loss
    from modeling_georsclip.training.optim import build_optimizer, build_scheduler
    from modeling_georsclip.training.stream import SourceSpec, TrainLoader, build_train_dataset

    cfg = TrainConfig.load(config, ["--num_workers", str(workers), *overrides])
    cfg.data = [_repeated_csv(SourceSpec.from_any(source), repeat) for source in cfg.data]
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    if accelerator.device.type == "cpu":
        set_cpu_threads(cfg)  # as train() does
    model, processor = load_model(cfg)
    model = prepare_trainable(model, cfg)
    dataset = build_train_dataset(cfg.data, processor=processor, batch_size=cfg.batch_size, seed=cfg.seed,
                                  image_transform=transform_for_processor(processor, cfg.augment),
                                  shuffle_buffer=cfg.shuffle_buffer)
    loader = TrainLoader(dataset, num_workers=workers)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    core = _clip_core(accelerator.unwrap_model(model))
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    times: dict[str, float] = defaultdict(float)
    samples, done, epoch, warmup = 0, 0, 0, 3
    while done < steps + warmup:
        loader.set_epoch(epoch)
        batches = iter(loader)
        while done < steps + warmup:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            sync()
            t1 = time.perf_counter()
            out = model(**batch)
            loss = clip_loss(out.image_embeds, out.text_embeds, core.logit_scale)
            sync()
            t2 = time.perf_counter()
            accelerator.backward(loss)
            sync()
            t3 = time.perf_counter()
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            clamp_logit_scale_(core.logit_scale)
            sync()
            t4 = time.perf_counter()
            done += 1
            if done <= warmup:  # worker start-up and first-call costs excluded
                continue
            for key, value in (("data_wait", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2),
                               ("optimizer", t4 - t3), ("total", t4 - t0)):
                times[key] += value
            samples += batch["pixel_values"].shape[0]
        del batches
        epoch += 1
    measured = done - warmup
    result = {f"{k}_ms": 1000 * v / measured for k, v in times.items()}
    result.update({f"{k}_frac": times[k] / times["total"] for k in ("data_wait", "forward", "backward", "optimizer")})
    result["beyond_fwd_bwd_opt_frac"] = 1 - (times["forward"] + times["backward"] + times["optimizer"]) / times["total"]
    result["samples_per_s"] = samples / times["total"]
    result["steps"] = measured
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny_cpu.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=40, help="repeat a CSV source's rows (steady state)")
    args, overrides = parser.parse_known_args()
    result = measure(args.config, args.steps, args.workers, overrides, args.repeat)
    for key, value in result.items():
        print(f"{key:26s} {value:10.3f}" if isinstance(value, float) else f"{key:26s} {value:10d}")


if __name__ == "__main__":
    main()
