"""Where slmtune keeps its cache (models, converted weights, data sets): ``$SLMTUNE_HOME``, default ``~/.slmtune``."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("SLMTUNE_HOME") or Path.home() / ".slmtune").expanduser()


def models_dir() -> Path:
    return home() / "models"


def downloads_dir() -> Path:
    return home() / "downloads"


def private_dir(path: str | Path) -> Path:
    """``mkdir -p`` whose new folders are the owner's alone (0700): the service's uploads, runs and database hold
    other people's data. Existing folders keep their mode (an operator may have chosen it)."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        p.chmod(0o700)
    return path


def private_file(path: str | Path) -> Path:
    """Create ``path`` empty and owner-only (0600) unless it exists; what is written to it later keeps that mode."""
    path = Path(path)
    private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    return path
