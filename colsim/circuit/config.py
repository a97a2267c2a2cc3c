"""The ``circuit:`` section of a protocol (docs/architecture.md, "Circuits"; issue 14).

::

    circuit:
      shared: true              # one set of weights for every column (one batched forward)
      vote: mean                # mean | consensus | evidence (see colsim.column.vote)
      columns:
        - {name: c0, sensor: {patch: {top: 0, left: 0, size: 20}}, reads: [c1, c2]}
        - {name: c1, sensor: {patch: {top: 0, left: 12, size: 20}}}
        - {name: d, sensor: {channels: [depth]}}   # a channel the world names (objects3d depth: true)

* ``sensor.patch`` — the window of the view the column sees, in pixels (``size`` = height = width,
  or ``height`` / ``width``); no patch: the whole view. ``sensor.channels`` — channel indices or the
  names the world gives (``WorldSpec.channel_names``); none: every channel.
* ``reads`` — lateral wiring: the columns whose z_AGG *of the previous tick* this column reads
  (t-1 only). Because every read is delayed one tick, any loop between different columns
  is schedulable; the one loop the schedule has no use for is a column reading itself (its own
  previous z_AGG is not a lateral input), which is rejected, as are unknown and repeated names.

Checks needing the world (patch inside the view, channel names, equal sensor shapes under shared
weights) run in :func:`check_circuit` once the world's spec is known; every error is one line
naming the field, e.g. ``protocol.circuit.columns[2].sensor.patch: ...``.
"""
from __future__ import annotations

import re
from typing import Literal, Optional, Union

from pydantic import Field

from colsim.errors import ConfigError
from colsim.strict import Strict

__all__ = ["PatchConfig", "SensorConfig", "ColumnConfig", "CircuitConfig", "check_circuit_names", "check_circuit"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class PatchConfig(Strict):
    top: int = Field(0, ge=0)
    left: int = Field(0, ge=0)
    size: Optional[int] = Field(None, gt=0)  # square patch: height = width = size
    height: Optional[int] = Field(None, gt=0)
    width: Optional[int] = Field(None, gt=0)

    def hw(self) -> "tuple[int, int]":
        h = self.height if self.height is not None else self.size
        w = self.width if self.width is not None else self.size
        return h, w


class SensorConfig(Strict):
    patch: Optional[PatchConfig] = None  # None: the whole view
    channels: Optional[list[Union[int, str]]] = None  # None: every channel


class ColumnConfig(Strict):
    name: str
    sensor: SensorConfig = Field(default_factory=SensorConfig)
    reads: list[str] = Field(default_factory=list)  # lateral wiring: these columns' z_AGG at t-1


class CircuitConfig(Strict):
    columns: list[ColumnConfig] = Field(min_length=1)
    shared: bool = True
    vote: Literal["mean", "consensus", "evidence"] = "mean"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def wiring(self) -> dict[str, list[str]]:
        return {c.name: list(c.reads) for c in self.columns}


def check_circuit_names(c: CircuitConfig, where: str = "protocol.circuit") -> None:
    """Names and wiring (no world needed): identifiers, unique, not ``vote``; reads of known, other columns."""
    seen: set[str] = set()
    for i, col in enumerate(c.columns):
        if not _NAME.fullmatch(col.name):
            raise ConfigError(f"{where}.columns[{i}].name: {col.name!r} is not a name (letters, digits, _; starting "
                              "with a letter): it prefixes the column's parameters, e.g. c0.encoder.*")
        if col.name == "vote":
            raise ConfigError(f"{where}.columns[{i}].name: 'vote' is reserved for the vote's entry in the store; "
                              "pick another name")
        if col.name in seen:
            raise ConfigError(f"{where}.columns[{i}].name: {col.name!r} is used twice; column names must be unique")
        seen.add(col.name)
    for i, col in enumerate(c.columns):
        for k, src in enumerate(col.reads):
            if src not in seen:
                raise ConfigError(f"{where}.columns[{i}].reads[{k}]: unknown column {src!r}; columns: "
                                  f"{', '.join(c.names)}")
            if src == col.name:
                raise ConfigError(f"{where}.columns[{i}].reads[{k}]: column {src!r} reads itself; lateral wiring "
                                  "links different columns (a loop through other columns is fine: reads are t-1)")
            if col.reads.index(src) != k:
                raise ConfigError(f"{where}.columns[{i}].reads[{k}]: {src!r} is listed twice")


def check_circuit(c: CircuitConfig, obs_shape: "tuple[int, int, int]", channel_names: "tuple[str, ...]" = (),
                  where: str = "protocol.circuit") -> "list[tuple[tuple[int, ...], int, int, int, int]]":
    """Check the sensors against the world's view ``obs_shape`` (C, H, W) -> per column
    ``(channels, top, left, height, width)`` (resolved; channel names mapped to indices)."""
    check_circuit_names(c, where)
    C, H, W = obs_shape
    out = []
    for i, col in enumerate(c.columns):
        s, p = col.sensor, col.sensor.patch
        if p is None:
            top, left, h, w = 0, 0, H, W
        else:
            if p.size is not None and (p.height is not None or p.width is not None):
                raise ConfigError(f"{where}.columns[{i}].sensor.patch: give either size or height/width, not both")
            h, w = p.hw()
            if h is None or w is None:
                raise ConfigError(f"{where}.columns[{i}].sensor.patch: give its size (or height and width) in pixels")
            top, left = p.top, p.left
            if top + h > H or left + w > W:
                raise ConfigError(f"{where}.columns[{i}].sensor.patch: rows {top}..{top + h - 1}, columns {left}.."
                                  f"{left + w - 1} fall outside the {H}x{W} view; move or shrink the patch")
        if s.channels is None:
            chans = tuple(range(C))
        else:
            if not s.channels:
                raise ConfigError(f"{where}.columns[{i}].sensor.channels: empty; list at least one channel or drop it")
            chans = []
            for k, ch in enumerate(s.channels):
                if isinstance(ch, str):
                    if ch not in channel_names:
                        have = f"the world names {', '.join(channel_names)}" if channel_names else \
                            "the world names no channels (use indices)"
                        raise ConfigError(f"{where}.columns[{i}].sensor.channels[{k}]: no channel {ch!r}; {have}")
                    ch = channel_names.index(ch)
                if not 0 <= ch < C:
                    raise ConfigError(f"{where}.columns[{i}].sensor.channels[{k}]: channel {ch} does not exist; the "
                                      f"view has {C} channel{'s' if C != 1 else ''} (0..{C - 1})")
                chans.append(ch)
            chans = tuple(chans)
        out.append((chans, top, left, h, w))
    if c.shared and len({(len(ch), h, w) for ch, _, _, h, w in out}) > 1:
        i = next(k for k, o in enumerate(out) if (len(o[0]), o[3], o[4]) != (len(out[0][0]), out[0][3], out[0][4]))
        raise ConfigError(f"{where}.columns[{i}].sensor: shared weights need every sensor to give the same "
                          f"(channels, height, width); column 0 gives {(len(out[0][0]), out[0][3], out[0][4])}, this "
                          f"one {(len(out[i][0]), out[i][3], out[i][4])}; equalise them or set circuit.shared: false")
    return out
