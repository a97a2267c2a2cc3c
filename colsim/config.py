"""Run configuration: YAML -> validated pydantic models, presets by name, ``--set`` overrides.

A run's resolved configuration is one document::

    protocol: {...}   # the protocol file (world, stream, phases, evaluation, record)
    model:    {...}   # a model preset (models/<name>.yaml), validated by the model's config
    rule:     {...}   # a rule preset (rules/<name>.yaml) + modifiers, validated by the rule
    seed: 0
    device: cpu

Every error is a :class:`ConfigError` with one line naming the field path and the fix,
e.g. ``protocol.phases[2].steps: must be > 0``.
"""
from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from colsim import presets, registry
from colsim.errors import ConfigError, ConfigWarning
from colsim.overrides import apply_override, parse_seeds  # noqa: F401 (re-exported)
from colsim.presets import load_yaml_file, load_yaml_text
from colsim.strict import Strict, format_validation_error, validate_as
from colsim.circuit.config import CircuitConfig, check_circuit_names

__all__ = [
    "ConfigError", "ConfigWarning", "Strict", "OptimizerConfig", "PhaseConfig", "StreamConfig", "EvaluationConfig",
    "RecordConfig", "CheckpointConfig", "ProtocolConfig", "RunConfig", "load_yaml_text", "load_yaml_file",
    "resolve_run_config", "apply_override", "parse_seeds", "format_validation_error", "validate_as", "rule_spec_to_config",
]



# ------------------------------------------------------------------------------------------
# protocol

class GroupOverride(Strict):
    """Hyper-parameters of the parameters matching one ``optimizer.groups`` pattern (unset: the rule's)."""

    lr: Optional[float] = Field(None, gt=0)
    weight_decay: Optional[float] = Field(None, ge=0)
    warmup_steps: Optional[int] = Field(None, ge=0)
    schedule: Optional[Literal["constant", "cosine"]] = None
    name: Optional[Literal["adamw", "adam", "sgd"]] = None  # optimizer kind for these parameters (colsim/build.py)


class OptimizerConfig(Strict):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(4e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    # after the warm-up: "constant", or "cosine" from lr down to min_lr at the run's last step
    # (seq-JEPA's reference training: CosineAnnealingLR to 1e-5 after a linear warm-up, Ghaemi et al. 2025);
    # unset: the protocol's `schedule` (a property of the training regime), else constant
    schedule: Optional[Literal["constant", "cosine"]] = None
    min_lr: float = Field(1e-5, ge=0)
    fused: bool = False  # torch's fused Adam/AdamW kernels (CPU and CUDA)
    # per-parameter hyper-parameters: glob over parameter names (first match wins) -> overrides,
    # e.g. {"aggregator.*": {lr: 4.0e-4, warmup_steps: 20}}; unmatched parameters use the fields above
    groups: dict[str, GroupOverride] = Field(default_factory=dict)


class PhaseConfig(Strict):
    name: str
    steps: int = Field(gt=0)
    classes: Optional[list[int]] = None  # None: every class of the world
    learn: bool = True  # false: this phase runs as protocol.learn=false does (evaluation mode, no rule call)
    world: dict[str, Any] = Field(default_factory=dict)  # per-phase world overrides (action ranges, context)


class StreamConfig(Strict):
    batch: int = Field(32, gt=0)
    episode_length: int = Field(8, ge=2)


class EvaluationConfig(Strict):
    probe_samples: int = Field(200, ge=10)  # episodes per probe set (one set per phase)
    views: int = Field(4, ge=2)  # views per probe episode
    at_start: bool = True  # evaluate before any training (needed for FWT)
    every: Optional[int] = Field(None, gt=0)  # extra evaluations every N steps (besides phase ends)
    # which held-out images the probe sets come from: "probe" (reported) or "validation" (for choosing
    # hyper-parameters; disjoint from the train and probe images; never reported as a result)
    pool: Literal["probe", "validation"] = "probe"
    batch: int = Field(256, gt=0)
    # which read-outs an evaluation scores: "all" (the linear probes, equivariance and, on a supervised column, its
    # own heads) or "heads" (a supervised column's own heads only: the continual-learning accuracies of
    # models/classifier.py at about half the run time; the probe read-outs are NaN)
    readouts: Literal["all", "heads"] = "all"


class RecordConfig(Strict):
    metrics_every: int = Field(1, gt=0)
    flush_every: int = Field(200, gt=0)
    # also flush once this much wall time has passed since the last flush: a hard kill loses seconds of rows
    flush_seconds: Optional[float] = Field(10.0, gt=0)
    probe: bool = True  # write probe activity (z, z_agg, actions, labels) at each evaluation
    # with one stream (batch 1) the collapse diagnostics use the rows of the last this-many ticks
    collapse_window: int = Field(32, ge=1)
    enabled: bool = True


class CheckpointConfig(Strict):
    """Step-level checkpoints (besides the one at every phase end): every ``every`` steps and at the first step
    boundary after ``every_seconds`` of wall time since the last checkpoint, the last ``keep`` of them kept
    (phase-end checkpoints are always kept). ``every: null`` and ``every_seconds: null``: phase ends only.
    A checkpoint changes no number of the run (a resumed run repeats the uninterrupted one bit for bit on
    CPU wherever it was taken), so the time-based default makes any run recoverable within minutes."""

    every: Optional[int] = Field(None, gt=0)
    every_seconds: Optional[float] = Field(120.0, gt=0)
    keep: int = Field(2, ge=1)


class ProtocolConfig(Strict):
    name: str
    description: str = ""
    world: dict[str, Any]
    stream: StreamConfig = Field(default_factory=StreamConfig)
    phases: list[PhaseConfig] = Field(min_length=1)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    record: RecordConfig = Field(default_factory=RecordConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    model: str = "seqjepa_cnn"  # default model preset
    rule: str = "backprop"  # default rule spec
    # false: no phase learns, whatever the phases say (`--set protocol.learn=false`). This freezes MORE than
    # the weights: the column runs in evaluation mode (dropout off, normalisation layers on their running
    # statistics, left unchanged), under no_grad, and the rule is never called (no update, no phase-end
    # boundary, no replay). Every forgetting is then exactly 0. The frozen-weights control arm is
    # `--rule frozen` instead (rules/frozen.py): training-mode passes, no parameter update.
    learn: bool = True
    # the learning-rate schedule after warm-up of every optimizer whose rule leaves
    # `rule.optimizer.schedule` unset: a stationary run anneals ("cosine", as seq-JEPA trains), a
    # continual stream has no end to anneal towards ("constant")
    schedule: Literal["constant", "cosine"] = "constant"
    circuit: Optional[CircuitConfig] = None  # several columns (colsim/circuit/config.py); None: one column

    @property
    def total_steps(self) -> int:
        return self.phase_end_steps[-1]  # phases has at least one entry

    @property
    def phase_end_steps(self) -> list[int]:
        """Steps done at the end of each phase (the ordering of phase checkpoints)."""
        return list(itertools.accumulate(p.steps for p in self.phases))


class RunConfig(Strict):
    protocol: ProtocolConfig
    model: Any  # the model's own config instance (validated through the registry)
    rule: Any  # RuleSpec (validated through the registry)
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict:
        proto = self.protocol.model_dump(mode="json")
        if proto.get("circuit") is None:  # one column: the config reads as before circuits existed
            proto.pop("circuit", None)
        return {
            "protocol": proto,
            "model": self.model.model_dump(mode="json"),
            "rule": self.rule.model_dump(mode="json"),
            "seed": self.seed,
            "device": self.device,
        }


# ------------------------------------------------------------------------------------------
# rule specs: "lpl", "lpl+metaplastic", partitions

class RuleSpec(Strict):
    """A validated rule: base ``config`` (or ``partition``) plus modifiers applied in order."""

    name: str
    config: Any = None  # base rule's config instance (None for partitions)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    partition: Optional[dict[str, "RuleSpec"]] = None
    wrap: list[Any] = Field(default_factory=list)  # modifier config instances

    def model_dump(self, **kw):  # noqa: D102 — nested configs are pydantic models of varying class
        d: dict[str, Any] = {"name": self.name}
        if self.partition is not None:
            d["partition"] = {k: v.model_dump(**kw) for k, v in self.partition.items()}
        else:
            d.update(self.config.model_dump(**kw))
        d["optimizer"] = self.optimizer.model_dump(**kw)
        if self.wrap:
            d["wrap"] = [w.model_dump(**kw) for w in self.wrap]
        return d


def rule_spec_to_config(data: Any, prefix: str = "rule") -> RuleSpec:
    """Validate a rule section: ``{name, optimizer, <rule fields>, wrap: [...]}`` or ``{partition: {...}}``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: must be a mapping, got {type(data).__name__}")
    data = dict(data)
    wrap = data.pop("wrap", []) or []
    if not isinstance(wrap, list):
        raise ConfigError(f"{prefix}.wrap: must be a list of modifier configs")
    opt = validate_as(OptimizerConfig, data.pop("optimizer", {}) or {}, f"{prefix}.optimizer")
    mods = []
    for i, w in enumerate(wrap):
        if not isinstance(w, dict) or "name" not in w:
            raise ConfigError(f"{prefix}.wrap[{i}]: must be a mapping with a 'name'")
        e = registry.lookup(registry.RULES, w["name"], "rule")
        if e.kind != "modifier":
            raise ConfigError(f"{prefix}.wrap[{i}]: {w['name']!r} is a base rule, not a modifier; "
                              f"modifiers: {', '.join(sorted(n for n, x in registry.RULES.items() if x.kind == 'modifier'))}")
        mods.append(validate_as(e.config, w, f"{prefix}.wrap[{i}]"))
    if "partition" in data:
        part = data.pop("partition")
        extra = set(data) - {"name"}
        if extra:
            raise ConfigError(f"{prefix}.{sorted(extra)[0]}: unknown key next to 'partition' (put rule fields inside each group)")
        if not isinstance(part, dict) or not part:
            raise ConfigError(f"{prefix}.partition: must map parameter patterns (e.g. 'encoder.*') to rule sections")
        groups = {str(k): rule_spec_to_config(v, f"{prefix}.partition.{k}") for k, v in part.items()}
        name = data.get("name") or "partition(" + ",".join(f"{k}:{v.name}" for k, v in groups.items()) + ")"
        return RuleSpec(name=name, partition=groups, optimizer=opt, wrap=mods)
    if "name" not in data:
        raise ConfigError(f"{prefix}.name: required field is missing (a rule name such as 'lpl')")
    e = registry.lookup(registry.RULES, data["name"], "rule")
    if e.kind != "base":
        raise ConfigError(f"{prefix}.name: {data['name']!r} is a modifier; use it as 'BASE+{data['name']}' "
                          f"(e.g. --rule lpl+{data['name']})")
    cfg = validate_as(e.config, data, prefix)
    if not e.updates:  # a control arm that changes no parameter: nothing for a consolidating modifier to act on
        for i, m in enumerate(mods):
            if registry.RULES[m.name].updates:
                raise ConfigError(f"{prefix}.wrap[{i}]: {m.name!r} acts on parameter updates and rule "
                                  f"{data['name']!r} makes none; drop '+{m.name}' (or use a learning rule, "
                                  f"e.g. backprop+{m.name})")
    full = "+".join([data["name"]] + [m.name for m in mods])
    return RuleSpec(name=full, config=cfg, optimizer=opt, wrap=mods)


def rule_preset(spec: str) -> dict:
    """``"lpl+metaplastic"`` -> the lpl preset with the metaplastic preset in ``wrap``.

    A modifier named first (``"si"``, ``"replay+ewc"``) wraps the default base rule
    ``backprop``: ``--rule si`` is ``--rule backprop+si``."""
    parts = [p.strip() for p in spec.split("+")]
    if not all(parts):
        raise ConfigError(f"--rule {spec!r}: empty part; write e.g. 'lpl' or 'lpl+metaplastic'")
    e = registry.RULES.get(parts[0])
    if e is not None and e.kind != "base":
        parts.insert(0, "backprop")
    base = _rule_preset_one(parts[0])
    base.setdefault("wrap", [])
    for m in parts[1:]:
        base["wrap"].append(_rule_preset_one(m))
    return base


def _rule_preset_one(name: str) -> dict:
    if presets.is_path(name) or name in presets.preset_names("rules"):
        return presets.load("rules", name)
    if name in registry.RULES:
        return {"name": name}
    raise ConfigError(f"unknown rule {name!r}; valid: {', '.join(sorted(set(registry.RULES) | set(presets.preset_names('rules'))))} "
                      "(or a rule YAML file)")


# ------------------------------------------------------------------------------------------
# resolution

def resolve_run_config(
    protocol: str | Path,
    rule: Optional[str] = None,
    model: Optional[str] = None,
    overrides: tuple[str, ...] | list[str] = (),
    seed: Optional[int] = None,
    device: Optional[str] = None,
    steps: Optional[int] = None,
) -> RunConfig:
    """Protocol path or packaged name + rule/model preset names + overrides -> RunConfig.

    ``protocol`` may also be a run's resolved ``config.yaml`` (``colsim run RUN_DIR/config.yaml``): that run's
    protocol, model and rule exactly, with ``seed`` / ``device`` / ``steps`` / overrides applied on top."""
    resolved = _resolved_run_config(protocol)
    if resolved is not None:
        given = [n for n, v in (("--rule", rule), ("--model", model)) if v]
        if given:
            raise ConfigError(f"{protocol}: a run's resolved config fixes its model and rule; drop {', '.join(given)} "
                              "(or change them with --set model.… / --set rule.…)")
        for o in overrides:
            apply_override(resolved, o)
        if seed is not None:
            resolved["seed"] = seed
        if device is not None:
            resolved["device"] = device
        return build_run_config(resolved, steps=steps)  # --steps rescales the resolved phases
    proto_raw = load_protocol(protocol)
    proto_raw = copy.deepcopy(proto_raw)
    # the protocol names its default model / rule; CLI options win
    model_name = model or proto_raw.get("model") or "seqjepa_cnn"
    rule_name = rule or proto_raw.get("rule") or "backprop"
    if not isinstance(model_name, str) or not isinstance(rule_name, str):
        raise ConfigError("protocol.model / protocol.rule: must be preset names (strings)")
    doc: dict[str, Any] = {
        "protocol": proto_raw,
        "model": presets.load("models", model_name),
        "rule": rule_preset(rule_name),
        "seed": 0 if seed is None else seed,
        "device": device or "cpu",
    }
    doc["protocol"]["model"], doc["protocol"]["rule"] = model_name, rule_name
    for o in overrides:
        apply_override(doc, o)
    if seed is not None:
        doc["seed"] = seed
    return build_run_config(doc, steps=steps)


def _resolved_run_config(protocol: str | Path) -> Optional[dict]:
    """The document of a run's resolved config.yaml (top-level protocol / model / rule mappings), or None for a
    protocol preset or file."""
    p = Path(protocol)
    if p.suffix not in (".yaml", ".yml") or not p.is_file():
        return None
    doc = load_yaml_file(p)
    if isinstance(doc, dict) and all(isinstance(doc.get(k), dict) for k in ("protocol", "model", "rule")):
        return copy.deepcopy(doc)
    return None


def load_protocol(protocol: str | Path) -> dict:
    """A packaged protocol by name or a protocol file by path, ``extends`` resolved (:mod:`colsim.presets`)."""
    return presets.load("protocols", protocol)


def build_run_config(doc: dict, steps: Optional[int] = None) -> RunConfig:
    extra = set(doc) - {"protocol", "model", "rule", "seed", "device"}
    if extra:
        raise ConfigError(f"{sorted(extra)[0]}: unknown top-level key; valid: protocol, model, rule, seed, device")
    proto = validate_as(ProtocolConfig, doc.get("protocol"), "protocol")
    w = proto.world
    if "name" not in w:
        raise ConfigError("protocol.world.name: required field is missing (e.g. affine_digits)")
    we = registry.lookup(registry.WORLDS, w["name"], "world")
    world_cfg = validate_as(we.config, w, "protocol.world")
    proto = proto.model_copy(update={"world": world_cfg.model_dump(mode="json")})
    if proto.circuit is not None:
        check_circuit_names(proto.circuit)
    for i, ph in enumerate(proto.phases):
        if ph.world:
            validate_as(we.config, {**proto.world, **ph.world}, f"protocol.phases[{i}].world")
    if steps is not None:
        if steps <= 0:
            raise ConfigError(f"--steps: must be > 0, got {steps}")
        proto = _shorten(proto, steps)
    m = doc.get("model")
    if not isinstance(m, dict) or "name" not in m:
        raise ConfigError("model.name: required field is missing (a model family such as 'seqjepa')")
    me = registry.lookup(registry.MODELS, m["name"], "model")
    model_cfg = validate_as(me.config, m, "model")
    rule_cfg = rule_spec_to_config(doc.get("rule"), "rule")
    seed = doc.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed: must be a non-negative integer, got {seed!r}")
    device = doc.get("device", "cpu")
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ConfigError(f"device: must be cpu, cuda or cuda:N, got {device!r}")
    from colsim.device import resolve_device_defaults  # here: colsim.device imports torch

    model_cfg = resolve_device_defaults(model_cfg, device)  # autocast / channels-last left unset: per device
    return RunConfig(protocol=proto, model=model_cfg, rule=rule_cfg, seed=seed, device=device)


def _shorten(proto: ProtocolConfig, steps: int) -> ProtocolConfig:
    """Scale phase lengths so they total ``steps`` while keeping their proportions (each >= 1)."""
    total = proto.total_steps
    n = len(proto.phases)
    if steps < n:
        raise ConfigError(f"--steps: {steps} is fewer than the protocol's {n} phases; use at least {n}")
    raw = [p.steps * steps / total for p in proto.phases]
    new = [max(1, int(r)) for r in raw]
    # distribute the remainder to the largest fractional parts
    rem = steps - sum(new)
    order = sorted(range(n), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    for i in order[: max(rem, 0)]:
        new[i] += 1
    phases = [p.model_copy(update={"steps": s}) for p, s in zip(proto.phases, new)]
    return proto.model_copy(update={"phases": phases})
