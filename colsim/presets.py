"""Presets: the YAML files of models, rules and protocols, and the one loader that resolves ``extends:``.

A preset is a YAML mapping shipped in its kind's folder (``models/``, ``rules/``, ``protocols/``) or any file
a user points at. Either may start from another preset of the same kind::

    extends: nonstationary            # a packaged preset, by name
    extends: ../base/my_world.yaml    # or a file, relative to the extending file's folder

The result is the base (itself resolved the same way) with this file merged into it:

* mappings merge key by key, at every depth (``stream: {batch: 1}`` keeps the base's ``episode_length``);
* lists replace the base's list whole (``phases:``, ``regularizers:``);
* a nested section whose ``kind`` or ``name`` differs from the base's replaces that section whole (a
  protocol that extends a digits protocol with ``world: {name: objects3d, ...}`` gets none of the digit
  world's fields);
* ``key: null`` sets the value to null (the config's default applies where null means "unset").

The resolved document has no ``extends`` left: a run's ``config.yaml`` stays flat.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from colsim.errors import ConfigError

__all__ = ["PACKAGES", "load_yaml_text", "load_yaml_file", "deep_merge", "preset", "preset_names", "load",
           "is_path"]

PACKAGES = {"rules": "colsim.rules", "models": "colsim.models", "protocols": "colsim.protocols"}
_DISCRIMINATORS = ("kind", "name")


def load_yaml_text(text: str, source: str) -> dict:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}:{where}: malformed YAML ({problem})") from None
    if not isinstance(doc, dict):
        kind = "empty" if doc is None else type(doc).__name__
        raise ConfigError(f"{source}: the document must be a mapping of keys to values, got {kind}")
    return doc


def load_yaml_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: file not found")
    if not p.is_file():
        raise ConfigError(f"{p}: not a file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read ({exc.__class__.__name__}: {exc})") from None
    return load_yaml_text(text, str(p))


def deep_merge(base: Any, over: Any, _depth: int = 0) -> Any:
    """``over`` merged into a copy of ``base`` by the rules of this module's docstring."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return _copy(over)
    if _depth > 0 and any(k in over and k in base and over[k] != base[k] for k in _DISCRIMINATORS):
        return _copy(over)
    out = {k: _copy(v) for k, v in base.items()}
    for k, v in over.items():
        out[k] = deep_merge(base[k], v, _depth + 1) if k in base else _copy(v)
    return out


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def is_path(ref: Union[str, Path]) -> bool:
    """A reference names a file (rather than a packaged preset) when it ends in .yaml/.yml or has a slash."""
    s = str(ref)
    return s.endswith((".yaml", ".yml")) or "/" in s or "\\" in s


def preset_names(kind: str) -> list[str]:
    root = resources.files(PACKAGES[kind])
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset(kind: str, name: str) -> dict:
    """The packaged preset ``name`` of ``kind`` ("rules", "models", "protocols"), ``extends`` resolved."""
    path = resources.files(PACKAGES[kind]) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {kind[:-1]} preset {name!r}; valid: {', '.join(preset_names(kind))}")
    where = f"{kind}/{name}.yaml"
    return _resolve(kind, load_yaml_text(path.read_text(), where), where, None, (where,))


def load(kind: str, ref: Union[str, Path]) -> dict:
    """A preset by packaged name (``nonstationary``) or by file path (``my/proto.yaml``), ``extends`` resolved.

    A path that does not exist but names a packaged preset's file (``protocols/stationary.yaml`` run from
    another directory) falls back to the packaged preset. A bare name is a file only when such a file exists: a
    folder of the same name in the working directory (a run folder ``backprop/``) does not shadow the preset."""
    if not is_path(ref) and not Path(ref).is_file():
        return preset(kind, str(ref))
    p = Path(ref)
    if not p.exists() and p.stem in preset_names(kind) and p.parent.name in (kind, ""):
        return preset(kind, p.stem)
    return _resolve(kind, load_yaml_file(p), str(p), p.resolve().parent, (str(p.resolve()),))


def _resolve(kind: str, doc: dict, where: str, folder: Path | None, chain: tuple[str, ...]) -> dict:
    if "extends" not in doc:
        return doc
    base = doc.pop("extends")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{where}: extends: must name another {kind[:-1]} preset or a YAML file, got {base!r}")
    if is_path(base):
        if folder is None:
            # a packaged preset's path is relative to its own package folder
            target = resources.files(PACKAGES[kind]) / base
            key, label = f"{kind}/{base}", f"{kind}/{base}"
            if not target.is_file():
                raise ConfigError(f"{where}: extends: {base!r} is not a file in {kind}/")
            text, nxt = target.read_text(), None
        else:
            p = Path(base) if Path(base).is_absolute() else folder / base
            if not p.is_file():
                raise ConfigError(f"{where}: extends: {p} is not a file; give a path relative to {folder} "
                                  f"or a packaged {kind[:-1]} name ({', '.join(preset_names(kind))})")
            key, label, nxt = str(p.resolve()), str(p), p.resolve().parent
            text = None
        if key in chain:
            raise ConfigError(f"{where}: extends: cycle {' -> '.join((*chain, key))}; remove one extends")
        base_doc = load_yaml_text(text, label) if text is not None else load_yaml_file(Path(label))
        resolved = _resolve(kind, base_doc, label, nxt, (*chain, key))
    else:
        if (resources.files(PACKAGES[kind]) / f"{base}.yaml").is_file():
            key = f"{kind}/{base}.yaml"
        else:
            raise ConfigError(f"{where}: extends: must name another {kind[:-1]} preset or a YAML file, got "
                              f"{base!r}; valid: {', '.join(n for n in preset_names(kind) if f'{kind}/{n}.yaml' != where)}")
        if key in chain:
            raise ConfigError(f"{where}: extends: cycle {' -> '.join((*chain, key))}; remove one extends")
        path = resources.files(PACKAGES[kind]) / f"{base}.yaml"
        resolved = _resolve(kind, load_yaml_text(path.read_text(), key), key, None, (*chain, key))
    return deep_merge(resolved, doc)
