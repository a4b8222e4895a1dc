"""User-facing input errors: one line naming the field, the value and what is allowed."""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad user input. The CLI prints ``str(err)`` as one line and exits with code 2.

    Parameters
    ----------
    field : str
        The option or config field, as the user spells it (``k``, ``loss``, ``grid.R``).
    value : Any
        The offending value.
    allowed : str
        What would be accepted, phrased as the fix.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {field}: {shorten(repr(value))}; expected {allowed}")


MAX_SHOWN = 200  # characters of a value an error message shows


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out (a 1 KB config can hold a value
    that prints as gigabytes)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class SweepStoppedError(RuntimeError):
    """A sweep stopped by its environment, not by its input (a full disk): the CLI prints ``str(err)`` as
    one line and exits with code 1. Every completed batch is in the store, and rerunning resumes."""
