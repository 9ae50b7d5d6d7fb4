"""One logger for the whole package: ``get_logger(__name__)`` everywhere, configured once."""

from __future__ import annotations

import logging
import os

_ROOT = "georsclip"
_configured = False


def get_logger(name: str | None = None) -> logging.Logger:
    """Return a child of the ``georsclip`` logger; the first call installs a plain stderr handler.

    The level comes from ``GEORSCLIP_LOG_LEVEL`` (default INFO).
    """
    global _configured
    root = logging.getLogger(_ROOT)
    if not _configured:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("GEORSCLIP_LOG_LEVEL", "INFO").upper())
        root.propagate = False
        _configured = True
    if not name or name == _ROOT:
        return root
    short = name.removeprefix("modeling_georsclip.")
    return root.getChild(short)
