"""Evaluate GeoRSCLIP-style models: zero-shot classification, retrieval and semantic localization.

    python evaluate.py --model DIR_OR_HUB_ID --tasks zsc,retrieval,selo --data-root DIR [--output results.json]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 evaluate.py ...

This file shares its name with the ``evaluate`` library. Whenever the repository root is on ``sys.path``
(running this script, ``python -m pytest``, ``python -c "import evaluate"`` here), ``import evaluate``
finds this file first. Imported under that name, it therefore replaces itself with the real library in
``sys.modules`` (the import system returns whatever ``sys.modules`` holds once the module has run), so
``import evaluate`` keeps meaning the Hugging Face library everywhere. Run as a script, it is ``__main__``
and is a thin shim over ``modeling_georsclip.evaluate`` (same flags, same outputs).
"""

from __future__ import annotations

import importlib
import os
import sys


def _load_evaluate_library() -> None:
    """Import the ``evaluate`` library in place of this file (we are the module named ``evaluate``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    shadowing = [p for p in sys.path if os.path.abspath(p or os.getcwd()) == here]
    saved = list(sys.path)
    this_module = sys.modules.pop(__name__)
    sys.path[:] = [p for p in sys.path if p not in shadowing]
    try:
        library = importlib.import_module("evaluate")
    except BaseException:
        sys.modules[__name__] = this_module
        raise
    finally:
        sys.path[:] = saved
    sys.modules[__name__] = library


if __name__ == "__main__":
    from modeling_georsclip.evaluate import main

    sys.exit(main())
elif __name__ == "evaluate":
    _load_evaluate_library()
