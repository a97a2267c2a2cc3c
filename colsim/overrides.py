"""What the command line adds to a config: ``--set KEY=VALUE`` overrides and ``--seeds`` lists.

Both raise :class:`~colsim.errors.ConfigError` with one line naming the option and the fix.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from colsim.errors import ConfigError

__all__ = ["apply_override", "parse_seeds"]


_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def _parse_path(path: str) -> list:
    out: list = []
    for part in path.split("."):
        m = _KEY.fullmatch(part)
        if not m:
            raise ConfigError(f"--set {path}: bad key {part!r}; write e.g. protocol.phases[0].steps=100")
        out.append(m.group(1))
        out += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return out


def apply_override(doc: dict, assignment: str) -> None:
    """Apply ``a.b[0].c=VALUE`` (VALUE parsed as YAML) to ``doc`` in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. rule.optimizer.lr=1e-3")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    path = _parse_path(key.strip())
    if path[0] == "circuit":  # shorthand: --set circuit.shared=false is protocol.circuit.shared
        path.insert(0, "protocol")
    roots = ("protocol", "model", "rule", "seed", "device")
    if path[0] not in roots:
        raise ConfigError(f"--set {key}: must start with one of {', '.join(roots)} (e.g. protocol.stream.batch=16)")
    node: Any = doc
    for i, k in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(k, int):
            if not isinstance(node, list) or k >= len(node):
                raise ConfigError(f"--set {key}: index [{k}] out of range")
            node = node[k]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {k!r} is not inside a mapping")
            if k not in node or node[k] is None:
                node[k] = [] if isinstance(nxt, int) else {}
            node = node[k]
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"--set {key}: index [{last}] out of range")
        node[last] = value
    else:
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: parent is not a mapping")
        node[last] = value


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` / ``"0-4"`` / ``"0-2,7"`` -> [0, 1, 2] / [0, ..., 4] / [0, 1, 2, 7]; ConfigError naming --seeds."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            vals = list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: {part!r} is not a seed; give integers like 0,1,2 or a range 0-4") \
                from None
        if sep and int(hi) < int(lo) or any(v < 0 for v in vals):
            raise ConfigError(f"--seeds {text!r}: {part!r} is not an increasing range of seeds >= 0")
        out.extend(vals)
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"--seeds {text!r}: seeds must be distinct non-negative integers, e.g. 0,1,2")
    return out
