"""The bottom layer: the exceptions the CLI turns into clear messages, and the extras hint.

Every other module may import this one; it imports nothing of the toolkit.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Iterable

# The distribution name on PyPI ("vla-eval" belongs to another project); the console
# script and the import name stay ``vla-eval`` / ``vla_eval``.
DIST = "vla-eval-libero"


class UsageError(ValueError):
    """Bad input from the user: the message names the bad value and what would be valid."""


class MissingDependency(UsageError):
    """An optional dependency is not installed: the message names the extra that brings it."""


def bad_choice(what: str, value: object, valid: Iterable[object]) -> UsageError:
    choices = ", ".join(str(v) for v in valid)
    return UsageError(f"unknown {what} {value!r}; valid: {choices}")


def install_hint(extra: str) -> str:
    return f"pip install '{DIST}[{extra}]'"


def require(module: str, extra: str, needed_for: str) -> ModuleType:
    """Import ``module`` or raise ``MissingDependency`` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{needed_for} needs {module.split('.')[0]} ({e}). Fix: {install_hint(extra)}") from e
