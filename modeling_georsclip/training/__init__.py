"""Contrastive fine-tuning of GeoRSCLIP with accelerate: full, tower-locked or PEFT, with exact resume.

    from modeling_georsclip.training import TrainConfig, train
    train(TrainConfig.load("configs/tiny_cpu.yaml", ["--max_steps", "20"]))
"""

from .config import ConfigError, TrainConfig
from .loop import ResumeError, train
from .loss import clip_loss

__all__ = ["ConfigError", "ResumeError", "TrainConfig", "clip_loss", "train"]
