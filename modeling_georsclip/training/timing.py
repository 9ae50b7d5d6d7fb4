"""Where the time of a training step goes: cumulative wall time per phase, measured inside the real loop.

``train()`` always keeps one (``data_wait_frac`` in the logs comes from it); ``benchmarks/train_step.py`` passes
its own with ``sync`` set so that GPU work is attributed to the phase that queued it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

PHASES = ("data_wait", "forward", "backward", "optimizer", "rest")


class StepTimer:
    """``mark(phase)`` charges the time since the previous mark to ``phase``; ``reset()`` starts a new window."""

    def __init__(self, sync: Callable[[], None] | None = None, skip_steps: int = 0):
        self.sync = sync
        self.skip_steps = skip_steps  # warm-up optimizer steps left out of the totals (worker start, first calls)
        self.totals: Counter = Counter()
        self.steps = 0
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self.totals[phase] += now - self._last
        self._last = now

    def step_done(self) -> None:
        """Called once per optimizer step, after its logging and checkpointing (charged to "rest")."""
        self.mark("rest")
        self.steps += 1
        if self.steps == self.skip_steps:
            self.reset()

    def reset(self) -> None:
        self.totals.clear()
        self._last = time.perf_counter()

    def report(self) -> dict[str, float]:
        """Milliseconds per step and fraction of the step, per phase."""
        total = sum(self.totals.values())
        steps = max(self.steps - self.skip_steps, 1)
        out = {f"{p}_ms": 1000 * self.totals[p] / steps for p in PHASES}
        out.update({f"{p}_frac": self.totals[p] / total if total else 0.0 for p in PHASES})
        out["step_ms"] = 1000 * total / steps
        return out
