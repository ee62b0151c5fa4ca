"""Third-party messages that tell a user nothing, filtered from every slmtune process (CLI, service, the training
children and ranks, which all import slmtune first). ``slmtune -v`` (or ``SLMTUNE_VERBOSE=1``) shows them.

Each entry is (logger name, text the message contains, why it is noise here).
"""

from __future__ import annotations

import logging
import os

NOISE = [
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community",
     "bitsandbytes looks for an optional Hub kernel at import (which peft triggers), also where no 4-bit model is "
     "used; its own CPU kernel is used instead"),
]
VERBOSE_ENV = "SLMTUNE_VERBOSE"


class _Drop(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


_installed: list[tuple[logging.Logger, logging.Filter]] = []


def install() -> None:
    """Filter the messages in NOISE (unless SLMTUNE_VERBOSE is set)."""
    if os.environ.get(VERBOSE_ENV) or _installed:
        return
    for name, text, _why in NOISE:
        logger = logging.getLogger(name)
        f = _Drop(text)
        logger.addFilter(f)
        _installed.append((logger, f))


def show_all() -> None:
    """``-v``: let every message through, in this process and the processes it starts."""
    os.environ[VERBOSE_ENV] = "1"
    while _installed:
        logger, f = _installed.pop()
        logger.removeFilter(f)
