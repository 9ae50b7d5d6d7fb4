"""Training checkpoints: list, resolve (checked before any work), save atomically, restore exactly.

A checkpoint is ``OUTPUT/checkpoints/step_NNNNNNNN/``: accelerate ``save_state`` (model, optimizer, scheduler, RNG;
sharded under FSDP), ``trainer_state.json`` (step, epoch, curves, fingerprint, world size, workers) and one
``data_state_rank{R}.json`` per process (that process's loader position).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..io import atomic_file, write_text_atomic
from ..log import get_logger

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "step_"


class ResumeError(ValueError):
    """A resume folder that is missing, incomplete or from another model/configuration."""


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (temp folders of an interrupted save are ignored), oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def resolve_resume(resume: str | None, output_dir: Path, fingerprint: dict[str, Any],
                   layout: dict[str, int]) -> Path | None:
    """The checkpoint to resume from (or None), checked against the current model and layout before any work.

    ``layout`` is ``{"world_size": N, "num_workers": W}``. The data position is saved per process and per
    dataloader worker (each reads its own shards), so a checkpoint cannot continue the epoch with another N or
    W without repeating or skipping samples: that is refused here, naming both values.
    """
    if not resume:
        return None
    root = output_dir / "checkpoints"
    if resume == "latest":
        found = list_checkpoints(root)
        if not found:
            logger.info("--resume latest: no checkpoint under %s, starting from scratch", root)
            return None
        path = found[-1]
    else:
        path = Path(resume)
    meta = path / "trainer_state.json"
    if not meta.is_file():
        raise ResumeError(f"resume folder {path} is not a training checkpoint (no trainer_state.json)")
    saved = json.loads(meta.read_text())
    if saved.get("fingerprint", {}).get("sha") != fingerprint["sha"]:
        raise ResumeError(
            f"resume folder {path} was written for a different model/mode: "
            f"saved {saved.get('fingerprint')}, current {fingerprint}"
        )
    for key, what in (("world_size", "processes"), ("num_workers", "dataloader workers")):
        if key in saved.get("layout", {}) and saved["layout"][key] != layout[key]:
            raise ResumeError(
                f"resume folder {path} was written with {saved['layout'][key]} {what} ({key}); this run has "
                f"{layout[key]}: resume with {saved['layout'][key]} {what} (the data position is saved per "
                "process and worker and cannot be re-split without repeating or skipping samples)"
            )
    return path


def save_checkpoint(accelerator, root: Path, step: int, trainer_state: dict, loader, keep: int) -> None:
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


def restore_checkpoint(accelerator, path: Path, loader) -> dict[str, Any]:
    """Load model/optimizer/scheduler/RNG and this process's data position; returns the trainer state."""
    data_state = path / f"data_state_rank{accelerator.process_index}.json"
    if not data_state.is_file():
        raise ResumeError(f"{path} has no {data_state.name}: was it written with another process count?")
    accelerator.load_state(str(path))
    loader.load_state_dict(json.loads(data_state.read_text()))
    state = json.loads((path / "trainer_state.json").read_text())
    logger.info("resumed from %s at step %d (epoch %d)", path, state["step"], state["epoch"])
    return state
