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
