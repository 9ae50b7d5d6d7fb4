"""The training loop: accelerate + global-batch CLIP loss + exact, atomic checkpoints.

Output folder layout::

    OUTPUT/final/           plain CLIP checkpoint + processor + README.md (model card) + training_curves.png
    OUTPUT/final/adapter/   PEFT runs only: the adapter (peft format) + logit_scale.safetensors
    OUTPUT/checkpoints/step_NNNNNNNN/   accelerate state + trainer_state.json + data_state_rank{R}.json
    OUTPUT/logs/            tracker logs (TensorBoard by default)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..inference import load_pretrained
from ..io import atomic_dir, atomic_file, json_digest, write_text_atomic
from ..log import get_logger
from ..metrics import retrieval_recall
from ..modeling import GeoRSCLIPModel, pooled
from ..processing import CONTEXT_LENGTH, GeoRSCLIPProcessor
from .augment import transform_for_processor
from .card import write_training_card
from .config import ConfigError, TrainConfig
from .loss import clamp_logit_scale_, clip_loss
from .optim import build_optimizer, build_scheduler
from .peft_utils import apply_peft, lock_tower, merged_clip, save_peft_outputs
from .stream import DataError, SourceSpec, TrainLoader, build_train_dataset, decode_pair

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "step_"


class ResumeError(ValueError):
    """A resume folder that is missing, incomplete or from another model/configuration."""


# ---------------------------------------------------------------------------------------------- model
def load_model(cfg: TrainConfig) -> tuple[GeoRSCLIPModel, GeoRSCLIPProcessor]:
    """The model to train and its processor (``model: tiny`` builds a seeded random tiny CLIP)."""
    if cfg.model == "tiny":
        from ..testing import tiny_clip

        model = tiny_clip(seed=cfg.seed, image_size=cfg.tiny_image_size)
        return model, GeoRSCLIPProcessor.default(image_size=cfg.tiny_image_size, preset=cfg.normalization)
    model = load_pretrained(cfg.model)  # ModelLoadError naming the path for a missing/corrupt model
    try:
        processor = GeoRSCLIPProcessor.from_pretrained(cfg.model)
    except (OSError, ValueError):
        logger.info("no processor in %s: using the default GeoRSCLIP processor", cfg.model)
        processor = GeoRSCLIPProcessor.default(model.config.vision_config.image_size, cfg.normalization)
    return model, processor


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


def prepare_trainable(model: GeoRSCLIPModel, cfg: TrainConfig):
    """Apply locking or PEFT; returns the module to train (maybe a PeftModel)."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lock_image:
        lock_tower(model, "vision", cfg.lock_image_unlocked_layers)
    if cfg.lock_text:
        lock_tower(model, "text", cfg.lock_text_unlocked_layers)
    model.logit_scale.requires_grad_(cfg.train_logit_scale)
    if cfg.peft:
        model = apply_peft(model, cfg.peft, cfg.peft_r, cfg.peft_alpha, cfg.peft_dropout, cfg.peft_towers,
                           cfg.peft_targets, cfg.train_logit_scale)
    return model


def _clip_core(model):
    """The CLIPModel inside a (possibly PEFT-wrapped) model."""
    return model.base_model.model if hasattr(model, "peft_config") else model


# ---------------------------------------------------------------------------------------------- validation
class ValidationSet:
    """Image-caption pairs for retrieval recall: unique images, captions with the index of their image."""

    def __init__(self, source: Any, processor, max_samples: int):
        from .stream import StreamingPairs, _resolve_csv, _resolve_files

        spec = SourceSpec.from_any(source)
        resolved = _resolve_csv(spec) if spec.resolved_kind() == "csv" else _resolve_files(spec)
        stream = StreamingPairs([resolved], tokenizer=None, image_transform=None, batch_size=1, shuffle_buffer=1)
        images: dict[str, int] = {}
        pixels, captions, owners = [], [], []
        for row in stream._epoch_dataset(0):
            if len(captions) >= max_samples:
                break
            raw = row["image"]
            ident = raw.get("path") or hashlib.sha1(raw.get("bytes") or b"").hexdigest()
            img, caption, kind = decode_pair(raw, row["caption"], None)
            if kind is not None:
                continue
            if ident not in images:
                images[ident] = len(images)
                pixels.append(processor.image_processor(img, return_tensors="pt")["pixel_values"][0])
            captions.append(caption)
            owners.append(images[ident])
        if not captions:
            raise DataError(f"validation data {spec.path} holds no readable pairs")
        self.pixel_values = torch.stack(pixels)
        self.captions, self.text_to_image = captions, owners
        self.tokenizer = processor.tokenizer

    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int = 64) -> dict[str, float]:
        was_training = model.training
        model.eval()
        img = torch.cat([pooled(model.get_image_features(pixel_values=self.pixel_values[i : i + batch_size].to(device)))
                         for i in range(0, len(self.pixel_values), batch_size)])
        txt = []
        for i in range(0, len(self.captions), batch_size):
            enc = self.tokenizer(self.captions[i : i + batch_size], padding=True, truncation=True,
                                 max_length=CONTEXT_LENGTH, return_tensors="pt").to(device)
            txt.append(pooled(model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])))
        txt = torch.cat(txt)
        sim = torch.nn.functional.normalize(txt.float(), dim=-1) @ torch.nn.functional.normalize(img.float(), dim=-1).t()
        model.train(was_training)
        return retrieval_recall(sim.cpu(), self.text_to_image)


# ---------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (temp folders of an interrupted save are ignored), oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def resolve_resume(cfg: TrainConfig, fingerprint: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from (or None), checked against the current model before any work."""
    if not cfg.resume:
        return None
    root = Path(cfg.output_dir) / "checkpoints"
    if cfg.resume == "latest":
        found = list_checkpoints(root)
        if not found:
            logger.info("--resume latest: no checkpoint under %s, starting from scratch", root)
            return None
        path = found[-1]
    else:
        path = Path(cfg.resume)
    meta = path / "trainer_state.json"
    if not meta.is_file():
        raise ResumeError(f"resume folder {path} is not a training checkpoint (no trainer_state.json)")
    saved = json.loads(meta.read_text())
    if saved.get("fingerprint", {}).get("sha") != fingerprint["sha"]:
        raise ResumeError(
            f"resume folder {path} was written for a different model/mode: "
            f"saved {saved.get('fingerprint')}, current {fingerprint}"
        )
    return path


def save_checkpoint(accelerator, root: Path, step: int, trainer_state: dict, loader: TrainLoader, keep: int) -> None:
    """accelerate ``save_state`` into a temp folder shared by all processes, then one atomic rename.

    (``io.atomic_dir`` makes a random temp name per process; every process must write into the same folder, so
    the name is derived from the step here.)
    """
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    with atomic_file(tmp / f"data_state_rank{accelerator.process_index}.json", "w") as handle:
        json.dump(loader.state_dict(), handle)
    if accelerator.is_main_process:
        write_text_atomic(tmp / "trainer_state.json", json.dumps(trainer_state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- outputs
def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "lr", "samples_per_s", "val_mR") if any(k in h for h in history)]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4 * max(len(keys), 1), 3))
    for ax, key in zip(np.atleast_1d(axes), keys, strict=False):
        points = [(h["step"], h[key]) for h in history if key in h]
        ax.plot(*zip(*points, strict=True), marker="." if key == "val_mR" else None)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- train
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


def train(cfg: TrainConfig) -> Path:
    """Run the training described by ``cfg``; returns the final model folder."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

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

    # ---- everything that can fail on bad input, before any work
    if cfg.global_batch_size:
        if cfg.global_batch_size % accelerator.num_processes:
            raise ConfigError(f"global_batch_size {cfg.global_batch_size} is not divisible by the "
                              f"{accelerator.num_processes} processes")
        cfg.batch_size = cfg.global_batch_size // accelerator.num_processes
    model, processor = load_model(cfg)
    model = prepare_trainable(model, cfg)
    fingerprint = model_fingerprint(_clip_core(model), cfg)
    resume_dir = resolve_resume(cfg, fingerprint)
    if not cfg.data:
        raise ConfigError("config key data is empty: give at least one training source")
    transform = transform_for_processor(processor, augment=cfg.augment)
    dataset = build_train_dataset(
        cfg.data, processor=processor, batch_size=cfg.batch_size, image_transform=transform,
        rank=accelerator.process_index, world_size=accelerator.num_processes, seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer, stopping_strategy=cfg.mix_stopping_strategy,
        max_image_pixels=cfg.max_image_pixels,
    )
    global_batch = cfg.batch_size * accelerator.num_processes
    if cfg.max_steps:
        total_steps = cfg.max_steps
    elif dataset.num_rows is not None:
        # Each dataloader worker drops its own last partial batch: count full batches per worker.
        workers = max(cfg.num_workers, 1)
        per_worker = dataset.num_rows // (accelerator.num_processes * workers)
        steps_per_epoch = (per_worker // cfg.batch_size) * workers // cfg.grad_accum
        if steps_per_epoch < 1:
            raise DataError(f"{dataset.num_rows} training pairs are fewer than one step needs "
                            f"({global_batch} x grad_accum {cfg.grad_accum})")
        total_steps = cfg.epochs * steps_per_epoch
    else:
        raise ConfigError("the size of the training data is unknown (streamed without counts): set max_steps")
    validation = ValidationSet(cfg.val_data, processor, cfg.val_max_samples) if cfg.val_data else None
    loader = TrainLoader(dataset, num_workers=cfg.num_workers)

    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    core = _clip_core(accelerator.unwrap_model(model))
    trainable = [p for p in model.parameters() if p.requires_grad]

    step, epoch, history = 0, 0, []
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        state = json.loads((resume_dir / "trainer_state.json").read_text())
        step, epoch, history = state["step"], state["epoch"], state["history"]
        data_state = resume_dir / f"data_state_rank{accelerator.process_index}.json"
        if not data_state.is_file():
            raise ResumeError(f"{resume_dir} has no {data_state.name}: was it written with another process count?")
        loader.load_state_dict(json.loads(data_state.read_text()))
        logger.info("resumed from %s at step %d (epoch %d)", resume_dir, step, epoch)
    else:
        loader.set_epoch(epoch)

    if trackers:
        accelerator.init_trackers("georsclip", config={k: str(v) for k, v in cfg.to_dict().items()})
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not accelerator.is_main_process, desc="train")
    debug_sleep = float(os.environ.get("GEORSCLIP_DEBUG_STEP_SLEEP", "0"))  # test hook: widen the kill window
    timers: Counter = Counter()
    window_samples, window_start = 0, time.perf_counter()
    ckpt_root = out / "checkpoints"
    model.train()
    total_batches = 0
    resumed_epoch = resume_dir is not None  # a checkpoint taken at an epoch's end resumes into an empty epoch
    while step < total_steps:
        batches = iter(loader)
        epoch_batches = 0
        while step < total_steps:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if not _all_have_batch(batch is not None, accelerator.device):
                break
            t1 = time.perf_counter()
            timers["data_wait"] += t1 - t0
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss = clip_loss(outputs.image_embeds, outputs.text_embeds, core.logit_scale,
                                 gather_with_grad=cfg.gather_with_grad, local_loss=cfg.local_loss)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            timers["compute"] += time.perf_counter() - t1
            window_samples += batch["pixel_values"].shape[0] * accelerator.num_processes
            epoch_batches += 1
            total_batches += 1
            if not accelerator.sync_gradients:
                continue
            clamp_logit_scale_(core.logit_scale)
            step += 1
            bar.update(1)
            if debug_sleep:
                time.sleep(debug_sleep)
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step, "epoch": epoch, "loss": float(loss.detach()),
                    "lr": scheduler.get_last_lr()[0], "logit_scale": float(core.logit_scale.detach().exp()),
                    "samples_per_s": window_samples / max(elapsed, 1e-9),
                    "data_wait_frac": timers["data_wait"] / max(elapsed, 1e-9),
                }
                history.append(record)
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                bar.set_postfix(loss=f"{record['loss']:.3f}", sps=f"{record['samples_per_s']:.0f}")
                timers.clear()
                window_samples, window_start = 0, time.perf_counter()
            if validation is not None and cfg.eval_every and step % cfg.eval_every == 0:
                if accelerator.is_main_process:
                    metrics = validation.evaluate(accelerator.unwrap_model(model), accelerator.device)
                    history.append({"step": step, **{f"val_{k}": v for k, v in metrics.items()}})
                    accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
                accelerator.wait_for_everyone()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                state = {"step": step, "epoch": epoch, "history": history, "fingerprint": fingerprint,
                         "config": cfg.to_dict()}
                save_checkpoint(accelerator, ckpt_root, step, state, loader, cfg.keep_checkpoints)
        del batches
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

    skipped = _sum_across(accelerator, dict(loader.skipped))
    if any(skipped.values()):
        logger.warning("skipped corrupt samples (all processes): %s", skipped)

    # ---- outputs (main process); PEFT: adapter + merged plain CLIP
    final = out / "final"
    results = None
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if validation is not None:
            results = validation.evaluate(unwrapped, accelerator.device)
            history.append({"step": step, **{f"val_{k}": v for k, v in results.items()}})
            logger.info("final validation retrieval: %s", {k: round(v, 2) for k, v in results.items()})
        with atomic_dir(final) as tmp:
            if cfg.peft:
                save_peft_outputs(unwrapped, tmp / "adapter")
                unwrapped = merged_clip(unwrapped)
            plain = unwrapped if isinstance(unwrapped, GeoRSCLIPModel) else GeoRSCLIPModel(unwrapped.config)
            if plain is not unwrapped:
                plain.load_state_dict(unwrapped.state_dict())
            plain.to(torch.float32).save_pretrained(tmp)
            processor.save_pretrained(tmp)
            summary = {"steps": step, "epochs_started": epoch + 1, "skipped_samples": skipped,
                       "final_validation": results, "history": history}
            write_text_atomic(tmp / "train_results.json", json.dumps(summary, indent=2))
            plot_curves(history, tmp / "training_curves.png")
            write_training_card(tmp, cfg, results)
        logger.info("saved the final model to %s", final)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if cfg.push_to_hub and accelerator.is_main_process:
        from ..hub import push_folder

        push_folder(final, cfg.push_to_hub, commit_message=f"georsclip train.py: {cfg.model_name or out.name}")
    return final


def _sum_across(accelerator, counts: dict[str, int]) -> dict[str, int]:
    if accelerator.num_processes == 1:
        return counts
    from accelerate.utils import gather_object

    total: Counter = Counter()
    for part in gather_object([counts]):
        total.update(part)
    return dict(total)


