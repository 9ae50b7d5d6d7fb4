"""What every test file shares: the paths, the environment of child processes and the tiny models.

Test files import the constants (``from conftest import ROOT, SAMPLES, subprocess_env``; pytest puts this
folder on ``sys.path``) and request the fixtures by name. Tests that start Python processes (CLIs,
``accelerate launch``) or run for more than ~10 s are marked ``slow``: ``pytest -m "not slow"`` is the fast
loop, CI (``scripts/test.sh``) runs everything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modeling_georsclip.resources import samples_dir

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (the shims ``train.py`` / ``evaluate.py`` live here)."""
SAMPLES = samples_dir()
"""The real RS samples shipped in the package (``images/``, ``captions.csv``, ``airslt_anno.json``)."""
TEST_DATA = ROOT / "tests" / "data"
"""Test-only data files (RSITMD captions, an RS3 caption dump)."""


def subprocess_env(**overrides: str) -> dict[str, str]:
    """Environment for a child process: this tree importable, offline Hub, one thread per child.

    One thread keeps children (several at once under ``accelerate launch``) from fighting over the CPU cores;
    a caller's own ``OMP_NUM_THREADS`` wins.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random plain-CLIP checkpoint folder (weights + processor), written once per session. Read-only."""
    from modeling_georsclip.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "tiny-georsclip")


@pytest.fixture(scope="session")
def open_clip_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A deterministic tiny open_clip checkpoint and its arch JSON (the converter's inputs), as main.py makes it."""
    from modeling_georsclip.testing import write_open_clip_checkpoint

    return write_open_clip_checkpoint(tmp_path_factory.mktemp("open-clip"), seed=0, image_size=64, patch_size=16,
                                      width=64)
