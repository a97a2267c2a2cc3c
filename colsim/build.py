"""Build runnable objects from a validated RunConfig: world, column, rule, optimizer.

Checks everything that can be checked before step 0: the rule's
``needs`` against the column's ``provides``, every parameter owned by exactly one rule of a
partition, and combinations that cannot work (a global rule on parameters that a layer-local
rule's detached forward cuts off).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Any, NamedTuple, Optional

import torch

from colsim import registry
from colsim.column import AbstractColumn
from colsim.config import ConfigError, OptimizerConfig, RuleSpec, RunConfig
from colsim.rule import Rule, first_match, partition

__all__ = ["Built", "build_run", "build_world", "build_column", "build_rule", "build_optimizer", "check_rule", "lr_at",
           "MultiOptimizer"]

SPECIAL_NEEDS = frozenset({"local", "global"})


class Built(NamedTuple):
    world: Any
    column: AbstractColumn
    rule: Rule
    local: bool
    optimizer: "torch.optim.Optimizer | MultiOptimizer"


def build_run(cfg: RunConfig) -> Built:
    """Seed torch with ``cfg.seed``, then build and check world, column, rule and optimizer."""
    torch.manual_seed(cfg.seed)
    world = build_world(cfg)
    for j, ph in enumerate(cfg.protocol.phases):  # every phase's probe set can be drawn (classes, pool)
        world.check_phase(ph.classes, ph.world, pool=cfg.protocol.evaluation.pool, where=f"protocol.phases[{j}]")
    if cfg.protocol.circuit is not None:  # several columns (issue 14): colsim/circuit/build.py
        if cfg.protocol.evaluation.readouts == "heads":
            raise ConfigError("protocol.evaluation.readouts: heads is for one supervised column, not a circuit; use "
                              "readouts: all")
        from colsim.circuit.build import build_circuit, build_circuit_rule

        column = build_circuit(cfg, world).to(cfg.device)
        rule, local, opt_spec = build_circuit_rule(cfg.rule, column, build_rule, check_rule)
        return Built(world, column, rule, local, build_optimizer(opt_spec, column, cfg.protocol.schedule))
    column = build_column(cfg, world).to(cfg.device)
    if cfg.protocol.evaluation.readouts == "heads" and not column.reads_labels:
        raise ConfigError(f"protocol.evaluation.readouts: heads scores a supervised column's own heads and "
                          f"{cfg.model.name} has none; use readouts: all or a classifier_* model")
    rule = build_rule(cfg.rule, column)
    local = check_rule(cfg.rule, rule, column)
    return Built(world, column, rule, local, build_optimizer(cfg.rule, column, cfg.protocol.schedule))


def build_world(cfg: RunConfig):
    e = registry.lookup(registry.WORLDS, cfg.protocol.world["name"], "world")
    return e.factory(e.config.model_validate(cfg.protocol.world))


def build_column(cfg: RunConfig, world) -> AbstractColumn:
    e = registry.lookup(registry.MODELS, cfg.model.name, "model")
    try:
        return e.factory(cfg.model, world.spec)
    except ConfigError:  # already one line naming its field (e.g. model.heads)
        raise
    except ValueError as exc:  # shape / divisibility problems found while building
        raise ConfigError(f"model: {exc}") from None


def build_rule(spec: RuleSpec, column: AbstractColumn) -> Rule:
    if spec.partition is not None:
        rule = partition({pat: build_rule(sub, column) for pat, sub in spec.partition.items()})
    else:
        e = registry.lookup(registry.RULES, spec.config.name, "rule")
        rule = e.factory(spec.config, column)
    for mod in spec.wrap:
        e = registry.lookup(registry.RULES, mod.name, "rule")
        rule = e.factory(mod, rule, column)
    return rule


def _groups(spec: RuleSpec, params: dict) -> list[tuple[RuleSpec, dict]]:
    """(sub-spec, params) per partition group (first matching pattern wins), or one group."""
    if spec.partition is None:
        return [(spec, params)]
    return list(zip(spec.partition.values(), first_match(params, spec.partition)))


def _needs(spec: RuleSpec, column) -> frozenset:
    return build_rule(spec, column).needs


def check_rule(spec: RuleSpec, rule: Rule, column: AbstractColumn) -> bool:
    """Validate a rule against a column; returns whether the column must run layer-local."""
    missing = set(rule.needs) - set(column.provides) - SPECIAL_NEEDS
    if missing:
        raise ConfigError(f"rule {spec.name!r} needs {sorted(missing)} which model {type(column).__name__} does not "
                          f"provide (it provides {sorted(column.provides)}); pick another --model or --rule")
    if "global" in rule.needs and not getattr(column, "differentiable", True):
        raise ConfigError(f"rule {spec.name!r} needs end-to-end gradients, but model {type(column).__name__} has no "
                          f"differentiable objective (local rules only); pick another --rule")
    params = column.trainable()
    names = [m.name for m in spec.wrap]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"rule {spec.name!r}: modifier {dup[0]!r} is applied twice; use it once")
    local = "local" in rule.needs
    if local and "local" not in column.provides:
        raise ConfigError(f"rule {spec.name!r} is layer-local but the model cannot run with detached block inputs")
    if spec.partition is not None:
        groups = _groups(spec, params)
        owned = set().union(*(set(g) for _, g in groups))
        orphans = sorted(set(params) - owned)
        if orphans:
            raise ConfigError(f"rule.partition: parameters {orphans[:3]}{'...' if len(orphans) > 3 else ''} match no "
                              f"pattern; add a catch-all group such as '*': {{name: backprop}}")
        scope = getattr(column, "local_scope", ("encoder.*",))
        for sub, grp in groups:
            if not grp:
                raise ConfigError(f"rule.partition: pattern for rule {sub.name!r} matches no parameter")
            if local and "global" in _needs(sub, column):
                cut = [n for n in grp if any(fnmatch.fnmatchcase(n, s) for s in scope)]
                if cut:
                    raise ConfigError(f"rule.partition: {sub.name!r} needs end-to-end gradients but another group is "
                                      f"layer-local, which detaches {cut[0]!r}; give those parameters a local rule")
    rule.init(params)  # rules check what they own (e.g. layerwise's predictors inside a partition) before step 0
    return local


def build_optimizer(spec: RuleSpec, column: AbstractColumn,
                    schedule: str = "constant") -> "torch.optim.Optimizer | MultiOptimizer":
    """The optimizer of a run: one torch optimizer per optimizer kind in use.

    Each parameter gets the hyper-parameters of its partition group's ``optimizer`` and, within
    it, of the first matching ``optimizer.groups`` pattern; a group override may also name its
    own kind (``"*": {name: adamw, lr: 4.0e-4}``: the presets train the modules a rule does not
    own alike, rules/README.md). One kind -> that torch optimizer; several -> a
    ``MultiOptimizer`` over one torch optimizer per kind. ``schedule`` (the protocol's) applies
    where neither the rule's ``optimizer.schedule`` nor a group override sets one (:func:`lr_at`)."""
    params = column.trainable()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    fused = False
    for sub, grp in _groups(spec, params):
        o: OptimizerConfig = sub.optimizer if spec.partition is not None else spec.optimizer
        fused = fused or o.fused
        for hp, part in _override_split(o, grp, schedule):
            kind = hp["name"] or o.name
            decay = [p for n, p in part.items() if not getattr(p, "_no_weight_decay", False)]
            no_decay = [p for n, p in part.items() if getattr(p, "_no_weight_decay", False)]
            base = {"lr": hp["lr"], "initial_lr": hp["lr"], "warmup_steps": hp["warmup_steps"],
                    "schedule": hp["schedule"], "min_lr": min(o.min_lr, hp["lr"])}
            if kind in ("adam", "adamw"):
                base["betas"] = o.betas
            if kind == "sgd":
                base["momentum"] = o.momentum if kind == o.name else 0.0
            groups = by_kind.setdefault(kind, [])
            if decay:
                groups.append({**base, "params": decay, "weight_decay": hp["weight_decay"]})
            if no_decay:
                groups.append({**base, "params": no_decay, "weight_decay": 0.0})
    fast = {"fused": True} if fused else {"foreach": True}
    opts = [_torch_optimizer(kind, groups, fast) for kind, groups in by_kind.items()]
    return opts[0] if len(opts) == 1 else MultiOptimizer(opts)


def _torch_optimizer(kind: str, groups: list, fast: dict) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(groups, **fast)
    if kind == "adam":
        # Adam's weight_decay is L2 (added to the gradient) as in the LPL paper
        return torch.optim.Adam(groups, **fast)
    return torch.optim.SGD(groups, foreach=True)


class MultiOptimizer:
    """Several torch optimizers stepped as one (parameters of different optimizer kinds).

    ``param_groups`` is the concatenation of theirs (the same dicts: setting ``lr`` there sets it
    in the owning optimizer); ``state_dict`` / ``load_state_dict`` hold one entry per optimizer."""

    def __init__(self, optimizers: "list[torch.optim.Optimizer]"):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("optimizers", ())) != len(self.optimizers):
            raise ValueError(f"optimizer state holds {len(state.get('optimizers', ()))} optimizers, this run has "
                             f"{len(self.optimizers)}; resume with the same rule and optimizer settings")
        for o, sd in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(sd)


def _override_split(o: OptimizerConfig, params: dict, schedule: str) -> list[tuple[dict, dict]]:
    """Split ``params`` by ``o.groups`` (first matching glob wins) -> [(hyper-parameters, params)].

    A pattern that matches none of the rule's parameters is an error (a typo would otherwise
    silently leave the defaults in place), except the catch-all ``"*"``, which cannot be a typo: on a
    column whose every parameter an earlier pattern takes (EchoSpike's MLP, LIF layers only), the presets'
    ``"*"`` group for shared modules is simply empty."""
    default = {"lr": o.lr, "weight_decay": o.weight_decay, "warmup_steps": o.warmup_steps,
               "schedule": o.schedule or schedule, "name": None}
    out = []
    for (pat, ov), part in zip(o.groups.items(), first_match(params, o.groups)):
        if not part and pat == "*":
            continue
        if not part:
            raise ConfigError(f"rule.optimizer.groups: pattern {pat!r} matches no trainable parameter of this rule "
                              f"(names look like {', '.join(sorted(params)[:3])}); fix or remove it")
        out.append(({k: (default[k] if v is None else v) for k, v in ov.model_dump().items()}, part))
    taken = {n for _, part in out for n in part}
    rest = {n: p for n, p in params.items() if n not in taken}
    if rest:
        out.insert(0, (default, rest))
    return out


def lr_at(group: dict, step: int, total: Optional[int] = None) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a run of ``total`` steps.

    Linear warm-up over ``warmup_steps``; then the ``schedule``: ``constant`` (the initial rate)
    or ``cosine`` (half a cosine from the initial rate at the warm-up's end to ``min_lr`` at step
    ``total - 1``; seq-JEPA's reference training, Ghaemi et al. 2025). A function of the step
    alone, so a resumed run continues the same schedule."""
    w = group.get("warmup_steps", 0)
    lr0 = group["initial_lr"]
    if w and step < w:
        return lr0 * (step + 1) / w
    if group.get("schedule", "constant") == "cosine" and total is not None and total - 1 > w:
        lo = group.get("min_lr", 0.0)
        frac = min(1.0, (step - w) / (total - 1 - w))
        return lo + 0.5 * (lr0 - lo) * (1.0 + math.cos(math.pi * frac))
    return lr0
