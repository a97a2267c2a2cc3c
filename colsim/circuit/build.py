"""Build a circuit (``protocol.circuit``, issue 14): its columns, its rules and the rule spec its optimizer
uses. Called by :func:`colsim.build.build_run`; everything is checked before step 0.

Rules apply per column. With shared weights there is one set of parameters (the columns are one
batched forward), so the rule is built on that column and a ``partition`` pattern naming a column is
an error. With per-column weights each column gets its own rule instance: the run's rule spec with
``partition`` / ``optimizer.groups`` patterns that start with a column name (``c0.encoder.*``)
applied to that column only (as ``encoder.*``) and other patterns applied to every column.
"""
from __future__ import annotations

from typing import Optional

from colsim import registry
from colsim.circuit.config import check_circuit
from colsim.column import Circuit
from colsim.config import ConfigError, RuleSpec
from colsim.rule import Rule, per_column
from colsim.circuit.sensors import Sensor, sensor_shape

__all__ = ["build_circuit", "build_circuit_rule"]


def build_circuit(cfg, world) -> Circuit:
    """Columns behind their sensors (shared: one column of the sensors' shape; else one per column)."""
    c = cfg.protocol.circuit
    resolved = check_circuit(c, world.spec.obs_shape, tuple(getattr(world.spec, "channel_names", ()) or ()))
    sensors = [Sensor(*r) for r in resolved]
    wiring = c.wiring
    reads = [bool(wiring[n]) for n in c.names]
    if any(reads) and "lateral" not in type(cfg.model).model_fields:
        i = reads.index(True)
        raise ConfigError(f"protocol.circuit.columns[{i}].reads: model family {cfg.model.name!r} cannot take lateral "
                          "input (seqjepa columns can); drop the reads or pick a seqjepa model")
    e = registry.lookup(registry.MODELS, cfg.model.name, "model")

    def make(sensor: Sensor, lateral: bool):
        mc = cfg.model.model_copy(update={"lateral": True}) if lateral else cfg.model
        try:
            return e.factory(mc, world.spec._replace(obs_shape=sensor_shape(sensor)))
        except ValueError as exc:  # a patch too small for the encoder, ...
            raise ConfigError(f"model: {exc} (a column sees a {sensor.height}x{sensor.width} sensor patch)") from None

    if c.shared:
        circuit = Circuit(c.names, sensors, wiring, c.vote, shared=make(sensors[0], any(reads)))
    else:
        circuit = Circuit(c.names, sensors, wiring, c.vote,
                          columns={n: make(s, r) for n, s, r in zip(c.names, sensors, reads)})
    if any(getattr(m, "reads_labels", False) for _, m in circuit._modules_by_name()):
        raise ConfigError(f"protocol.circuit: model family {cfg.model.name!r} learns from the world's labels, which a "
                          "circuit does not pass to its columns; run it as one column (drop protocol.circuit)")
    return circuit


def _column_of(pattern: str, names: list[str]) -> Optional[str]:
    head = pattern.split(".", 1)[0]
    return head if head in names and "." in pattern else None


def _for_column(spec: RuleSpec, name: str, names: list[str], where: str = "rule") -> RuleSpec:
    """The rule spec column ``name`` gets: its own and the unaddressed patterns, with its prefix dropped."""
    def local(items) -> dict:  # in order; a pattern equal to an earlier one is shadowed by it (first match wins)
        out: dict = {}
        for p, v in items:
            col = _column_of(p, names)
            if col in (None, name):
                out.setdefault(p.split(".", 1)[1] if col == name else p, (p, v))
        return out

    groups = {q: g for q, (_, g) in local(spec.optimizer.groups.items()).items()}
    upd: dict = {"optimizer": spec.optimizer.model_copy(update={"groups": groups})}
    if spec.partition is not None:
        part = {q: _for_column(s, name, names, f"{where}.partition.{p}")
                for q, (p, s) in local(spec.partition.items()).items()}
        if not part:
            raise ConfigError(f"{where}.partition: no pattern applies to column {name!r}; add one for it or a "
                              "catch-all such as '*'")
        upd["partition"] = part
    return spec.model_copy(update=upd)


def _for_circuit(spec: RuleSpec, names: list[str]) -> RuleSpec:
    """The spec over the circuit's prefixed parameter names (for its optimizer): unaddressed patterns get ``*.``."""
    fix = {p: (p if _column_of(p, names) else f"*.{p}") for p in list(spec.optimizer.groups) + list(spec.partition or {})}
    upd: dict = {"optimizer": spec.optimizer.model_copy(update={"groups": {fix[p]: g for p, g in
                                                                           spec.optimizer.groups.items()}})}
    if spec.partition is not None:
        upd["partition"] = {fix[p]: _for_circuit(s, names) for p, s in spec.partition.items()}
    return spec.model_copy(update=upd)


def _addressed(spec: RuleSpec, names: list[str]) -> Optional[str]:
    pats = list(spec.optimizer.groups) + list(spec.partition or {})
    hit = next((p for p in pats if _column_of(p, names)), None)
    if hit is None and spec.partition:
        hit = next((h for s in spec.partition.values() if (h := _addressed(s, names))), None)
    return hit


def build_circuit_rule(spec: RuleSpec, circuit: Circuit, build_rule, check_rule) -> "tuple[Rule, bool, RuleSpec]":
    """-> (rule, local, the spec to build the optimizer from over ``circuit.trainable()``)."""
    names = circuit.names
    if circuit.shared is not None:
        hit = _addressed(spec, names)
        if hit is not None:
            raise ConfigError(f"rule: pattern {hit!r} addresses column {hit.split('.')[0]!r}, but the columns share "
                              "one set of weights (names like encoder.*); set circuit.shared: false to give each "
                              "column its own parameters and rules")
        rule = build_rule(spec, circuit.shared)
        return rule, check_rule(spec, rule, circuit.shared), spec
    rules = {}
    for n, col in circuit.columns.items():
        sub = _for_column(spec, n, names)
        rules[n] = build_rule(sub, col)
        try:
            circuit.local_columns[n] = check_rule(sub, rules[n], col)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (column {n!r})") from None
    return per_column(rules), any(circuit.local_columns.values()), _for_circuit(spec, names)
