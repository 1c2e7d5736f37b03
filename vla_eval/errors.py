"""The one exception type the CLI turns into a clear message and a non-zero exit."""
from __future__ import annotations

from typing import Iterable


class UsageError(ValueError):
    """Bad input from the user: the message names the bad value and what would be valid."""


def bad_choice(what: str, value: object, valid: Iterable[object]) -> UsageError:
    choices = ", ".join(str(v) for v in valid)
    return UsageError(f"unknown {what} {value!r}; valid: {choices}")
