"""The training loop: setup, one ``train_step`` per micro-batch, checkpoints, the final save.

Read ``train`` top to bottom. Each feature is a small marked block of that one loop (in the manner of accelerate's
``examples/by_feature``); the pieces live beside it: ``checkpoint`` (list/resolve/save/restore), ``validation``,
``outputs`` (the final folder), ``timing`` (per-phase step time), ``stream`` (the data).

Output folder layout::

    OUTPUT/final/           plain CLIP checkpoint + processor + README.md (model card) + training_curves.png
    OUTPUT/final/adapter/   PEFT runs only: the adapter (peft format) + logit_scale.safetensors
    OUTPUT/checkpoints/step_NNNNNNNN/   accelerate state + trainer_state.json + data_state_rank{R}.json
    OUTPUT/logs/            tracker logs (TensorBoard by default)
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..inference import load_pretrained, load_processor
from ..io import json_digest
from ..log import get_logger
from ..modeling import GeoRSCLIPModel
from ..processing import GeoRSCLIPProcessor
from .augment import transform_for_processor
from .checkpoint import ResumeError, list_checkpoints, resolve_resume, restore_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .loss import clamp_logit_scale_, clip_loss
from .optim import build_optimizer, build_scheduler
from .outputs import save_final
from .peft_utils import apply_peft, clip_core, lock_tower
from .stream import DataError, StreamingPairs, TrainLoader, build_train_dataset
from .timing import StepTimer
from .validation import ValidationSet

__all__ = ["ResumeError", "ValidationSet", "list_checkpoints", "train", "train_step"]

logger = get_logger(__name__)


# ---------------------------------------------------------------------------------------------- model
def load_model(cfg: TrainConfig) -> tuple[GeoRSCLIPModel, GeoRSCLIPProcessor]:
    """The model to train and its processor (``model: tiny`` builds a seeded random tiny CLIP)."""
    if cfg.model == "tiny":
        from ..testing import tiny_clip

        model = tiny_clip(seed=cfg.seed, image_size=cfg.tiny_image_size)
        return model, GeoRSCLIPProcessor.default(image_size=cfg.tiny_image_size, preset=cfg.normalization)
    model = load_pretrained(cfg.model)  # ModelLoadError naming the path for a missing/corrupt model
    return model, load_processor(cfg.model, model.config.vision_config.image_size, cfg.normalization)


def model_fingerprint(model, cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: architecture and the trainable-parameter layout."""
    config = model.config
    arch = {
        "vision": {k: getattr(config.vision_config, k) for k in ("hidden_size", "num_hidden_layers", "image_size", "patch_size")},
        "text": {k: getattr(config.text_config, k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
        "projection_dim": config.projection_dim,
    }
    modes = {k: getattr(cfg, k) for k in ("peft", "lock_image", "lock_image_unlocked_layers", "lock_text",
                                          "lock_text_unlocked_layers", "train_logit_scale")}
    if cfg.peft:
        modes.update({k: getattr(cfg, k) for k in ("peft_r", "peft_towers", "peft_targets")})
    return {"arch": arch, "modes": modes, "sha": json_digest({"arch": arch, "modes": modes})[:16]}


def prepare_trainable(model: GeoRSCLIPModel, cfg: TrainConfig, fsdp: bool = False):
    """Apply locking or PEFT; returns the module to train (maybe a PeftModel)."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lock_image:
        lock_tower(model, "vision", cfg.lock_image_unlocked_layers)
    if cfg.lock_text:
        lock_tower(model, "text", cfg.lock_text_unlocked_layers)
    if fsdp:  # FSDP2's fully_shard refuses 0-d parameters; the final save restores the scalar shape
        model.logit_scale = torch.nn.Parameter(model.logit_scale.detach().reshape(1))
    model.logit_scale.requires_grad_(cfg.train_logit_scale)
    if cfg.peft:
        model = apply_peft(model, cfg.peft, cfg.peft_r, cfg.peft_alpha, cfg.peft_dropout, cfg.peft_towers,
                           cfg.peft_targets, cfg.train_logit_scale)
    return model


# ---------------------------------------------------------------------------------------------- setup
def make_accelerator(cfg: TrainConfig):
    """The Accelerator for ``cfg``, and the mode checks that need to know the device and the process layout."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, ProjectConfiguration, set_seed

    out = Path(cfg.output_dir)
    log_with = {"tensorboard": ["tensorboard"], "wandb": ["wandb"], "all": ["tensorboard", "wandb"], "none": None}
    trackers = log_with[cfg.report_to]
    if trackers and "wandb" in trackers:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("report_to includes wandb but wandb is not installed (pip install wandb)")
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        step_scheduler_with_optimizer=False,
        dynamo_backend="inductor" if cfg.compile else None,
    )
    set_seed(cfg.seed)
    if accelerator.device.type == "cpu":
        set_cpu_threads(cfg, accelerator.num_processes)
        if cfg.mixed_precision == "fp16":  # accelerate accepts it and silently trains in fp32 on CPU
            raise ConfigError("mixed_precision fp16 needs a GPU; on CPU use bf16 (autocast) or no")
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not fsdp:
        # accelerate grants FSDP only on GPU-like backends and otherwise falls back to DDP without a word.
        raise ConfigError(f"FSDP was requested but accelerate runs {accelerator.distributed_type.value} on "
                          f"{accelerator.device.type}: accelerate enables FSDP only on GPUs (use DDP on CPU)")
    if fsdp and cfg.peft:
        raise ConfigError("peft with FSDP is not supported: adapters are small, train them with DDP")
    if cfg.global_batch_size:
        if cfg.global_batch_size % accelerator.num_processes:
            raise ConfigError(f"global_batch_size {cfg.global_batch_size} is not divisible by the "
                              f"{accelerator.num_processes} processes")
        cfg.batch_size = cfg.global_batch_size // accelerator.num_processes
    return accelerator, trackers, fsdp


def count_steps(cfg: TrainConfig, dataset: StreamingPairs, num_processes: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``epochs`` full passes."""
    if cfg.max_steps:
        return cfg.max_steps
    if dataset.num_rows is None:
        raise ConfigError("the size of the training data is unknown (streamed without counts): set max_steps")
    # Each dataloader worker drops its own last partial batch: count full batches per worker.
    workers = max(cfg.num_workers, 1)
    per_worker = dataset.num_rows // (num_processes * workers)
    steps_per_epoch = (per_worker // cfg.batch_size) * workers // cfg.grad_accum
    if steps_per_epoch < 1:
        raise DataError(f"{dataset.num_rows} training pairs are fewer than one step needs "
                        f"({cfg.batch_size * num_processes} x grad_accum {cfg.grad_accum})")
    return cfg.epochs * steps_per_epoch


def set_cpu_threads(cfg: TrainConfig, local_processes: int = 1) -> int:
    """Leave a core per dataloader worker: oversubscribed OpenMP threads spin and slow CPU steps 10-100x."""
    threads = cfg.cpu_threads or max(1, (os.cpu_count() or 1) // max(local_processes, 1) - cfg.num_workers)
    torch.set_num_threads(threads)
    return threads


def _all_have_batch(have: bool, device) -> bool:
    """Every process must stop at the same step (shards may hold different numbers of rows)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return have
    flag = torch.tensor([1 if have else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _full(param: torch.Tensor) -> torch.Tensor:
    """A parameter's full value as one number (FSDP holds a shard; collective there, so every rank calls it)."""
    value = param.detach()
    return (value.full_tensor() if hasattr(value, "full_tensor") else value).reshape(())


def _sum_across(accelerator, counts: dict[str, int]) -> dict[str, int]:
    if accelerator.num_processes == 1:
        return counts
    from accelerate.utils import gather_object

    total: Counter = Counter()
    for part in gather_object([counts]):
        total.update(part)
    return dict(total)


# ---------------------------------------------------------------------------------------------- the step
def train_step(accelerator, model, batch: dict[str, torch.Tensor], optimizer, scheduler, cfg: TrainConfig,
               timer: StepTimer) -> torch.Tensor:
    """One micro-batch: forward with the global contrastive loss, backward, and on sync steps the update."""
    core = clip_core(accelerator.unwrap_model(model))
    with accelerator.accumulate(model):
        # Image and text features are gathered from every process with gradients: the contrastive batch is
        # batch_size x processes, whatever the accumulation.
        outputs = model(**batch)
        loss = clip_loss(outputs.image_embeds, outputs.text_embeds, core.logit_scale,
                         gather_with_grad=cfg.gather_with_grad, local_loss=cfg.local_loss)
        timer.mark("forward")
        accelerator.backward(loss)
        timer.mark("backward")
        # accumulate() makes optimizer.step/zero_grad no-ops until the last micro-batch; clip and schedule
        # only there (step_scheduler_with_optimizer=False: the schedule counts optimizer steps).
        if accelerator.sync_gradients and cfg.max_grad_norm:
            accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
        if accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    if accelerator.sync_gradients:
        clamp_logit_scale_(core.logit_scale)  # CLIP caps the temperature at 100
    timer.mark("optimizer")
    return loss


# ---------------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig, step_timer: StepTimer | None = None) -> Path:
    """Run the training described by ``cfg``; returns the final model folder.

    ``step_timer``: a ``timing.StepTimer`` to read the per-phase time of the real steps (benchmarks).
    """
    # ---- setup. Everything that can fail on bad input (config, model, resume folder, data) fails here.
    accelerator, trackers, fsdp = make_accelerator(cfg)
    model, processor = load_model(cfg)
    model = prepare_trainable(model, cfg, fsdp=fsdp)
    fingerprint = model_fingerprint(clip_core(model), cfg)
    layout = {"world_size": accelerator.num_processes, "num_workers": cfg.num_workers}
    resume_dir = resolve_resume(cfg.resume, Path(cfg.output_dir), fingerprint, layout)
    if not cfg.data:
        raise ConfigError("config key data is empty: give at least one training source")
    dataset = build_train_dataset(
        cfg.data, processor=processor, batch_size=cfg.batch_size,
        image_transform=transform_for_processor(processor, augment=cfg.augment),
        rank=accelerator.process_index, world_size=accelerator.num_processes, seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer, stopping_strategy=cfg.mix_stopping_strategy,
        max_image_pixels=cfg.max_image_pixels,
    )
    total_steps = count_steps(cfg, dataset, accelerator.num_processes)
    validation = ValidationSet(cfg.val_data, processor, cfg.val_max_samples) if cfg.val_data else None
    loader = TrainLoader(dataset, num_workers=cfg.num_workers)

    # ---- optimizer, schedule, and accelerate's wrapping (DDP / FSDP / compile / autocast)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    core = clip_core(accelerator.unwrap_model(model))
    if fsdp:  # validation calls these directly: let FSDP gather the root's shards around them as for forward
        from torch.distributed.fsdp import register_fsdp_forward_method

        for method in ("get_image_features", "get_text_features"):
            register_fsdp_forward_method(core, method)

    # ---- [feature: exact resume] model, optimizer, schedule, RNG, curves and every worker's data position
    step, epoch, history = 0, 0, []
    if resume_dir is not None:
        state = restore_checkpoint(accelerator, resume_dir, loader)
        step, epoch, history = state["step"], state["epoch"], state["history"]
    else:
        loader.set_epoch(epoch)

    if trackers:
        accelerator.init_trackers("georsclip", config={k: str(v) for k, v in cfg.to_dict().items()})
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not accelerator.is_main_process, desc="train")
    debug_sleep = float(os.environ.get("GEORSCLIP_DEBUG_STEP_SLEEP", "0"))  # test hook: widen the kill window
    timer = step_timer or StepTimer()
    window = {"samples": 0, "start": time.perf_counter(), "data_wait": 0.0}
    model.train()
    total_batches = 0
    resumed_epoch = resume_dir is not None  # a checkpoint taken at an epoch's end resumes into an empty epoch
    timer.reset()
    while step < total_steps:
        batches = iter(loader)
        epoch_batches = 0
        while step < total_steps:
            # ---- data: the workers decode, augment and tokenise; every process stops at the same batch
            batch = next(batches, None)
            if not _all_have_batch(batch is not None, accelerator.device):
                break
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            timer.mark("data_wait")
            # ---- the step
            loss = train_step(accelerator, model, batch, optimizer, scheduler, cfg, timer)
            window["samples"] += batch["pixel_values"].shape[0] * accelerator.num_processes
            epoch_batches += 1
            total_batches += 1
            if not accelerator.sync_gradients:
                continue  # a micro-batch of gradient accumulation: no optimizer step yet
            step += 1
            bar.update(1)
            if debug_sleep:
                time.sleep(debug_sleep)
            # ---- [feature: logging] loss, lr, temperature, throughput and data-wait share of the window
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - window["start"]
                record = {
                    "step": step, "epoch": epoch, "loss": float(loss.detach()),
                    "lr": scheduler.get_last_lr()[0], "logit_scale": _full(core.logit_scale).exp().item(),
                    "samples_per_s": window["samples"] / max(elapsed, 1e-9),
                    "data_wait_frac": (timer.totals["data_wait"] - window["data_wait"]) / max(elapsed, 1e-9),
                }
                history.append(record)
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                bar.set_postfix(loss=f"{record['loss']:.3f}", sps=f"{record['samples_per_s']:.0f}")
                window = {"samples": 0, "start": time.perf_counter(), "data_wait": timer.totals["data_wait"]}
            # ---- [feature: validation] on every process (FSDP forwards need all ranks); the main one logs
            if validation is not None and cfg.eval_every and step % cfg.eval_every == 0:
                metrics = validation.evaluate(accelerator.unwrap_model(model, keep_torch_compile=False))
                history.append({"step": step, **{f"val_{k}": v for k, v in metrics.items()}})
                accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
            # ---- [feature: checkpointing] all processes write, one atomic rename
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                state = {"step": step, "epoch": epoch, "history": history, "fingerprint": fingerprint,
                         "layout": layout, "config": cfg.to_dict()}
                save_checkpoint(accelerator, Path(cfg.output_dir) / "checkpoints", step, state, loader,
                                cfg.keep_checkpoints)
            timer.step_done()
        del batches
        # ---- end of an epoch: stop at max steps, on an empty dataset, or after the last epoch
        if step >= total_steps:
            break
        if epoch_batches == 0 and not resumed_epoch:
            if total_batches == 0 and step == 0:
                raise DataError("the training data yielded no complete batch: empty dataset or all samples corrupt "
                                f"(skipped: {dict(loader.skipped)})")
            break
        resumed_epoch = False
        epoch += 1
        if not cfg.max_steps and epoch >= cfg.epochs:
            break
        loader.set_epoch(epoch)
    bar.close()

    # ---- final validation and save: the weights are gathered on every process, written by the main one
    skipped = _sum_across(accelerator, dict(loader.skipped))
    if any(skipped.values()):
        logger.warning("skipped corrupt samples (all processes): %s", skipped)
    results = None
    if validation is not None:
        results = validation.evaluate(accelerator.unwrap_model(model, keep_torch_compile=False))
        history.append({"step": step, **{f"val_{k}": v for k, v in results.items()}})
        logger.info("final validation retrieval: %s", {k: round(v, 2) for k, v in results.items()})
    summary = {"steps": step, "epochs_started": epoch + 1, "skipped_samples": skipped,
               "distributed_type": accelerator.distributed_type.value, "world_size": accelerator.num_processes,
               "final_validation": results, "history": history}
    final = save_final(accelerator, model, processor, cfg, summary)
    accelerator.end_training()
    if cfg.push_to_hub and accelerator.is_main_process:
        from ..hub import push_folder

        push_folder(final, cfg.push_to_hub, commit_message=f"georsclip train.py: {cfg.model_name or Path(cfg.output_dir).name}")
    return final
