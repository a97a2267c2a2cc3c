"""Name -> factory registries for worlds, models (columns) and rules.

The core knows no concrete model or rule: ``colsim.models``, ``colsim.rules`` and
``colsim.protocols`` register theirs on import (the CLI imports them). Each entry carries
a pydantic config class (unknown keys rejected) and a factory:

* world:  ``factory(cfg) -> World`` (one world holds both the train and the probe pool)
* model:  ``factory(cfg, spec: WorldSpec) -> AbstractColumn``
* rule:   ``factory(cfg, column) -> Rule``            (kind ``"base"``)
          ``factory(cfg, inner: Rule, column) -> Rule`` (kind ``"modifier"``: wraps a rule)

Presets are YAML files shipped inside the registering package (``rules/lpl.yaml`` ->
``colsim.rules``), read with ``importlib.resources``.
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Callable, NamedTuple


__all__ = ["Entry", "WORLDS", "MODELS", "RULES", "register_world", "register_model", "register_rule",
           "preset", "preset_names", "lookup", "PACKAGES"]


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
PACKAGES = {"rules": "colsim.rules", "models": "colsim.models", "protocols": "colsim.protocols"}


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


def lookup(table: dict[str, Entry], name: str, what: str) -> Entry:
    from colsim.config import ConfigError

    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; valid: {', '.join(sorted(table)) or '(none registered)'}")
    return table[name]


def preset_names(kind: str) -> list[str]:
    root = resources.files(PACKAGES[kind])
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset(kind: str, name: str, _chain: tuple[str, ...] = ()) -> dict:
    """The YAML preset ``name`` of ``kind`` ("rules", "models", "protocols") as a dict.

    A preset may start from another of the same kind with ``extends: BASE``: the result is BASE's
    dict (itself resolved the same way) with this file's top-level keys replacing BASE's whole (a
    nested dict given here is not merged into BASE's), e.g. ``models/seqjepa_cnn_bn.yaml`` is
    ``extends: seqjepa_cnn`` plus one ``regularizers`` key.
    """
    from colsim.config import ConfigError, load_yaml_text

    root = resources.files(PACKAGES[kind])
    path = root / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {kind[:-1]} preset {name!r}; valid: {', '.join(preset_names(kind))}")
    where = f"{kind}/{name}.yaml"
    doc = load_yaml_text(path.read_text(), where)
    if "extends" not in doc:
        return doc
    base = doc.pop("extends")
    if not isinstance(base, str) or not (root / f"{base}.yaml").is_file():
        raise ConfigError(f"{where}: extends: must name another {kind[:-1]} preset, got {base!r}; valid: "
                          f"{', '.join(n for n in preset_names(kind) if n != name)}")
    if base in (*_chain, name):
        raise ConfigError(f"{where}: extends: cycle {' -> '.join((*_chain, name, base))}; remove one extends")
    out = preset(kind, base, (*_chain, name))
    out.update(doc)
    return out
