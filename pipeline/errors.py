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
        super().__init__(f"invalid {field}: {value!r}; expected {allowed}")


class SweepStoppedError(RuntimeError):
    """A sweep stopped by its environment, not by its input (a full disk): the CLI prints ``str(err)`` as
    one line and exits with code 1. Every completed batch is in the store, and rerunning resumes."""
