"""Process-group hygiene shared by every entry point that may run under ``accelerate launch``."""

from __future__ import annotations


def leave_process_group() -> None:
    """Destroy this process's torch.distributed group, if any, before the interpreter exits.

    A rank that finishes first (the non-main ranks, while the main one still writes results) and exits with
    a live gloo group lets gloo's C++ threads be torn down at interpreter shutdown: the process aborts with
    "terminate called without an active exception" (SIGABRT) and the whole launch fails. Destroying the group
    is local to this process, so it is safe on error paths too (no barrier that could hang on a dead peer).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
