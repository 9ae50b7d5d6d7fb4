"""Training configuration: one flat dataclass, loaded from YAML plus ``--key value`` overrides.

Unknown keys (in the file or on the command line) raise ``ConfigError`` naming the key before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..resources import is_packaged_recipe, locate_recipe_data


class ConfigError(ValueError):
    """A bad training configuration (unknown key, wrong value); raised before any work."""


@dataclasses.dataclass
class TrainConfig:
    # ---- model
    model: str = "tiny"  # "tiny" (random tiny CLIP, for tests/demo), a local folder or a Hub id
    tiny_image_size: int = 32  # image size of the tiny model
    normalization: str = "clip"  # processor normalisation preset when the model folder has no processor
    # ---- data (see modeling_georsclip.training.stream.SourceSpec for the keys of each source)
    data: list[Any] = dataclasses.field(default_factory=list)
    val_data: Any = None  # one source (CSV + images, parquet, dataset folder) for retrieval recall
    val_max_samples: int = 1000
    num_workers: int = 2
    shuffle_buffer: int = 1000
    mix_stopping_strategy: str = "first_exhausted"  # when sources have weights: first_exhausted | all_exhausted
    augment: bool = True  # GeoRSCLIP train augmentation (RandomResizedCrop 0.9-1, flip, rotation 0-360)
    max_image_pixels: int | None = 89_478_485  # Pillow's default; larger images are skipped as bombs
    # ---- optimisation
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 32  # per process, per micro-step (the contrastive batch is batch_size * processes)
    global_batch_size: int | None = None  # when set: batch_size = global_batch_size / processes (must divide)
    grad_accum: int = 1  # does NOT enlarge the contrastive batch (see docs/training.md)
    lr: float = 5e-6
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 100
    max_grad_norm: float | None = None
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_checkpointing: bool = False
    compile: bool = False
    cpu_threads: int | None = None  # CPU training: torch threads per process (default: cores/processes - workers)
    seed: int = 0
    # ---- loss
    gather_with_grad: bool = True
    local_loss: bool = True
    train_logit_scale: bool = True
    # ---- modes
    lock_image: bool = False
    lock_image_unlocked_layers: int = 0  # with lock_image: keep the last N vision blocks trainable
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    peft: str | None = None  # lora | dora | ia3
    peft_r: int = 8
    peft_alpha: int = 16
    peft_dropout: float = 0.0
    peft_towers: list[str] = dataclasses.field(default_factory=lambda: ["vision", "text"])
    peft_targets: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    )
    # ---- bookkeeping
    output_dir: str = "runs/georsclip"
    checkpoint_every: int = 500  # optimizer steps; 0 disables
    keep_checkpoints: int = 2
    resume: str | None = None  # "latest" or a checkpoint folder
    eval_every: int = 0  # optimizer steps; 0: only at the end
    log_every: int = 10
    report_to: str = "tensorboard"  # tensorboard | wandb | all | none
    model_name: str | None = None  # for the model card; default: output folder name
    base_model: str | None = None  # for the model card; default: ``model`` unless tiny
    dataset_names: list[str] = dataclasses.field(default_factory=list)  # for the model card
    push_to_hub: str | None = None

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML 1.1 reads a bare `no` as false
            self.mixed_precision = "no"
        self._coerce_numbers()
        checks = {
            "mixed_precision": (self.mixed_precision, {"no", "bf16", "fp16"}),
            "peft": (self.peft, {None, "lora", "dora", "ia3"}),
            "report_to": (self.report_to, {"tensorboard", "wandb", "all", "none"}),
            "mix_stopping_strategy": (self.mix_stopping_strategy, {"first_exhausted", "all_exhausted"}),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ConfigError(f"config key {key}: {value!r} is not one of {sorted(map(str, allowed))}")
        for key in ("batch_size", "grad_accum", "epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key {key} must be >= 1, got {getattr(self, key)}")
        if not set(self.peft_towers) <= {"vision", "text"} or not self.peft_towers:
            raise ConfigError(f"config key peft_towers must be a subset of [vision, text], got {self.peft_towers}")
        if self.peft and (self.lock_image or self.lock_text):
            raise ConfigError("peft and lock_image/lock_text are exclusive (peft already freezes the base model)")
        if isinstance(self.data, (str, dict)):
            self.data = [self.data]

    def _coerce_numbers(self) -> None:
        """YAML reads ``5e-6`` (no dot) as a string: convert numeric fields, or fail naming the key."""
        for field in dataclasses.fields(self):
            kind = str(field.type).split(" |")[0]
            value = getattr(self, field.name)
            if kind in ("float", "int") and value is not None and not isinstance(value, bool):
                try:
                    number = float(value)
                    setattr(self, field.name, number if kind == "float" else int(number))
                    if kind == "int" and number != int(number):
                        raise ValueError
                except (TypeError, ValueError):
                    raise ConfigError(f"config key {field.name}: expected {kind}, got {value!r}") from None
            elif kind == "bool" and not isinstance(value, bool):
                raise ConfigError(f"config key {field.name}: expected true/false, got {value!r}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{origin}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**values)
        except TypeError as err:
            raise ConfigError(f"{origin}: {err}") from err

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
        """Read ``path`` (YAML mapping) and apply ``--key value`` overrides (values parsed as YAML)."""
        values: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {path} must hold a mapping of keys to values")
            values.update(loaded)
            if is_packaged_recipe(path):  # its samples/... paths must work from a wheel too
                values.update({k: locate_recipe_data(values[k]) for k in ("data", "val_data") if k in values})
        values.update(parse_overrides(overrides))
        return cls.from_dict(values, origin=str(path) if path else "command line")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--lr", "1e-5", "--peft=lora"]`` -> ``{"lr": 1e-5, "peft": "lora"}`` (dashes in keys become underscores)."""
    out: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(items) or items[i + 1].startswith("--"):
                raise ConfigError(f"override --{key} needs a value")
            value = items[i + 1]
            i += 1
        out[key.replace("-", "_")] = yaml.safe_load(value) if value != "" else None
        i += 1
    return out
