"""Strict config models and their one-line errors (imports only :mod:`colsim.errors`).

Every config class in colsim derives from :class:`Strict`: unknown keys are rejected and values are validated
on assignment. :func:`validate_as` turns pydantic's report into one line naming the field path and the fix,
e.g. ``protocol.phases[2].steps: must be > 0``.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from colsim.errors import ConfigError

__all__ = ["Strict", "validate_as", "format_validation_error"]


class Strict(BaseModel):
    """Base of every config model: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(err: dict) -> str:
    t, ctx = err["type"], err.get("ctx") or {}
    if t == "greater_than":
        return f"must be > {ctx['gt']}"
    if t == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if t == "less_than":
        return f"must be < {ctx['lt']}"
    if t == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if t == "extra_forbidden":
        return "unknown key (remove it or check its spelling)"
    if t == "missing":
        return "required field is missing"
    if t == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg[0].lower() + msg[1:] if msg else msg


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    errs = exc.errors()
    e = errs[0]
    path = _loc(tuple(prefix.split(".")) + tuple(e["loc"]) if prefix else tuple(e["loc"]))
    more = f" (and {len(errs) - 1} more error{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    return f"{path}: {_message(e)}{more}"


def validate_as(cls: type, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: must be a mapping, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix)) from None


