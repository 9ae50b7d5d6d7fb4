"""Evaluate GeoRSCLIP-style models: ``python -m modeling_georsclip.evaluate`` / ``georsclip-evaluate``.

    python -m modeling_georsclip.evaluate --model DIR_OR_HUB_ID --tasks zsc,retrieval,selo --data-root DIR
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m modeling_georsclip.evaluate ...

The flags are those of ``modeling_georsclip.evaluation.cli`` (``--help``). Inside this package the module name
does not shadow the ``evaluate`` library: absolute ``import evaluate`` still finds the library.
"""

from __future__ import annotations

import sys

from .evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
