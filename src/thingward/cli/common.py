"""What every command shares: the --data-dir and --json options, output, and error reporting."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from sqlalchemy.exc import OperationalError

from thingward.errors import ThingwardError
from thingward.platform import Platform
from thingward.registry.db import database_error

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="THINGWARD_DATA_DIR",
        help="Data directory [default: $THINGWARD_DATA_DIR, else ./thingward-data].",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]


def emit(as_json: bool, data: dict[str, Any], human: Callable[[], None] | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, default=str) + "\n")
        sys.stdout.flush()
    elif human is not None:
        human()
    else:
        for key, value in data.items():
            console.print(f"[bold]{key}[/bold]: {value}")


def fail(message: str, as_json: bool, code: int = 1) -> typer.Exit:
    """Report an error: one line on stderr, and `{"error": ...}` on stdout with --json."""
    err_console.print(f"error: {message}", markup=False, highlight=False)
    if as_json:
        sys.stdout.write(json.dumps({"error": message}) + "\n")
    return typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn thingward's errors into exit 1 with a message; anything else stays a crash with a trace."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ThingwardError as e:
            raise fail(str(e), bool(kwargs.get("as_json"))) from None
        except OperationalError as e:  # the database is down, unreachable, or refused our credentials
            raise fail(f"the database failed: {database_error(e)}", bool(kwargs.get("as_json"))) from None
        finally:
            _close_opened_platforms()

    return wrapper


# Platforms a command opened; closed when it ends, so no database connection outlives the command.
_opened: list[Platform] = []


def _close_opened_platforms() -> None:
    while _opened:
        _opened.pop().close()


def open_platform(data_dir: Path | None, check_schema_version: bool = True) -> Platform:
    """The data dir's platform, closed by `handle_errors` when the command returns or fails."""
    platform = Platform.open(data_dir, check_schema_version)
    _opened.append(platform)
    return platform
