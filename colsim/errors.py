"""The errors and warnings colsim raises for bad user input (a leaf module: it imports nothing of colsim).

Every layer raises :class:`ConfigError` for input a user can fix; the CLI prints its one line and exits 2.
"""
from __future__ import annotations

__all__ = ["ConfigError", "ConfigWarning"]


class ConfigError(ValueError):
    """Bad user input (file, field, name). The CLI prints it on one line and exits 2."""


class ConfigWarning(UserWarning):
    """A legal setting that cannot do what it is likely meant to (e.g. a gate that can never close).
    The CLI prints it on one line, ``warning: <field>: ...``, and the run goes on."""
