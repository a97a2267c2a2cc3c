"""Name -> factory registries for worlds, models (columns) and rules.

The core knows no concrete model or rule: ``colsim.models``, ``colsim.rules`` and
``colsim.protocols`` register theirs on import (the CLI imports them). Each entry carries
a pydantic config class (unknown keys rejected) and a factory:

* world:  ``factory(cfg) -> World`` (one world holds both the train and the probe pool)
* model:  ``factory(cfg, spec: WorldSpec) -> AbstractColumn``
* rule:   ``factory(cfg, column) -> Rule``            (kind ``"base"``)
          ``factory(cfg, inner: Rule, column) -> Rule`` (kind ``"modifier"``: wraps a rule)

Presets are YAML files shipped inside the registering package (``rules/lpl.yaml`` ->
``colsim.rules``), read and extended by :mod:`colsim.presets`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from colsim.errors import ConfigError
from colsim.presets import PACKAGES, preset, preset_names  # noqa: F401 (re-exported: presets by kind)


__all__ = ["Entry", "WORLDS", "MODELS", "RULES", "register_world", "register_model", "register_rule",
           "preset", "preset_names", "lookup", "load_plugins", "PACKAGES"]


class Entry(NamedTuple):
    name: str
    config: type  # pydantic BaseModel subclass
    factory: Callable[..., Any]
    kind: str  # "world" | "model" | "base" | "modifier"
    summary: str
    # rules only. base: the rule changes parameters (False: the ``frozen`` control arm); modifier: it acts on the
    # inner rule's parameter updates (si, ewc, metaplastic; False: replay, which acts on its inputs). A modifier
    # that acts on updates around a base rule that makes none is refused (colsim.config.rule_spec_to_config).
    updates: bool = True


WORLDS: dict[str, Entry] = {}
MODELS: dict[str, Entry] = {}
RULES: dict[str, Entry] = {}


def _summary(fn) -> str:
    doc = (fn.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def register_world(name: str, config: type):
    def deco(fn):
        WORLDS[name] = Entry(name, config, fn, "world", _summary(fn))
        return fn
    return deco


def register_model(name: str, config: type):
    def deco(fn):
        MODELS[name] = Entry(name, config, fn, "model", _summary(fn))
        return fn
    return deco


def register_rule(name: str, config: type, kind: str = "base", updates: bool = True):
    if kind not in ("base", "modifier"):
        raise ValueError(f"rule kind must be 'base' or 'modifier', got {kind!r}")

    def deco(fn):
        RULES[name] = Entry(name, config, fn, kind, _summary(fn), updates)
        return fn
    return deco


def load_plugins() -> None:
    """Import the packages that register colsim's worlds, models and rules (the core imports none of them)."""
    import importlib

    for pkg in PACKAGES.values():
        importlib.import_module(pkg)


def lookup(table: dict[str, Entry], name: str, what: str) -> Entry:
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; valid: {', '.join(sorted(table)) or '(none registered)'}")
    return table[name]
