"""One way to say what is wrong with input that pydantic refused: where it is, and what was expected."""

from __future__ import annotations

from pydantic import ValidationError


def first_problem(error: ValidationError, whole: str = "input") -> str:
    """'ports.tcp.0: Input should be less than or equal to 65535' for the first thing wrong."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or whole
    return f"{where}: {first['msg']}"
