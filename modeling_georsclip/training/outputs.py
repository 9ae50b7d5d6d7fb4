"""The final folder of a run: plain CLIP weights (gathered from every process), processor, card, curves, results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_dir, atomic_file, write_text_atomic
from ..log import get_logger
from ..modeling import GeoRSCLIPModel
from .card import write_training_card
from .config import TrainConfig
from .peft_utils import merged_clip, save_peft_outputs

logger = get_logger(__name__)


def plain_state_dict(accelerator, model) -> dict[str, torch.Tensor]:
    """Full CLIP weights with plain keys. Collective: every process must call it (FSDP gathers the shards).

    Under FSDP ``accelerator.get_state_dict`` gathers the full state dict; otherwise the module is unwrapped
    from DDP *and* ``torch.compile`` (whose ``_orig_mod.`` key prefix a plain CLIPModel does not load).
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        state = accelerator.get_state_dict(model)
    else:
        state = accelerator.unwrap_model(model, keep_torch_compile=False).state_dict()
    if "logit_scale" in state:  # FSDP2 trains it as a 1-element vector (fully_shard refuses scalars)
        state["logit_scale"] = state["logit_scale"].reshape(())
    return state


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


def save_final(accelerator, model, processor, cfg: TrainConfig, summary: dict[str, Any]) -> Path:
    """Write ``OUTPUT/final`` atomically (PEFT runs: adapter + merged plain CLIP); returns its path."""
    final = Path(cfg.output_dir) / "final"
    state = None if cfg.peft else plain_state_dict(accelerator, model)  # every process: FSDP gathers
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        with atomic_dir(final) as tmp:
            if cfg.peft:
                save_peft_outputs(unwrapped, tmp / "adapter")
                plain = merged_clip(unwrapped)
            else:
                plain = GeoRSCLIPModel(unwrapped.config)
                plain.load_state_dict(state)
            plain.to(torch.float32).save_pretrained(tmp)
            processor.save_pretrained(tmp)
            write_text_atomic(tmp / "train_results.json", json.dumps(summary, indent=2))
            plot_curves(summary["history"], tmp / "training_curves.png")
            write_training_card(tmp, cfg, summary["final_validation"])
        logger.info("saved the final model to %s", final)
    accelerator.wait_for_everyone()
    return final
