"""What every command module shares: the two consoles, the error-to-exit-code mapping, small formatters.

Library imports inside functions here and in the command modules are deliberately lazy: the engine pulls in torch and
transformers (seconds), and ``slmtune --help``, ``slmtune keys list`` or ``slmtune db current`` should not pay that.
"""

from __future__ import annotations

import functools

import typer
from rich.console import Console
from rich.markup import escape

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def esc(text: object) -> str:
    """Text shown as is inside rich markup (a file name with ``[brackets]`` stays a file name)."""
    return escape(str(text))


def fail(message: str, code: int) -> None:
    """Print ``error: MESSAGE`` to stderr and exit with ``code`` (1 bad data/model/run, 2 bad usage/config)."""
    err.print(f"[bold red]error:[/] {esc(message)}")
    raise typer.Exit(code)


def handle_errors(fn):
    """Map library exceptions to clear messages and exit codes (no tracebacks for user errors)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from slmtune.config import ConfigError
        from slmtune.data.formats import DataError
        from slmtune.data.tokenize import TemplateError
        from slmtune.models.registry import ModelNotAvailable
        from slmtune.training.distributed import LaunchError
        from slmtune.training.run import RunDirError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, RunDirError) as e:
            fail(str(e), 2)
        except (DataError, ModelNotAvailable, TemplateError, FileNotFoundError, LaunchError) as e:
            fail(str(e), 1)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def duration(seconds: float) -> str:
    """``1h05m`` or ``4m09s``."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
