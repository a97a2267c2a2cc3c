"""Rate-matched random layers: the control arm that asks whether a trained spiking layer beats *random* weights
at the same firing rate (issue 31; EchoSpike, Graf, Su & Indiveri 2024, arXiv 2405.13976, reports no untrained
arm, and random LIF layers can read out as well as trained ones when their rates match).

Each LIF block keeps its random initial weights' direction and only rescales them, W_l <- s_l W_l, until its firing
rate on the training stream (spikes per neuron and bin, the mean of the Trace's ``spikes``) equals a target rate
r*_l. Per tick, with r_l the block's rate on this tick's views::

    s_l = clip((r*_l / r_l) ** gain, 1 / max_step, max_step)       (s_l = max_step when the block is silent)

returned as the descent direction ``(1 - s_l) W_l``: with the preset's plain SGD at lr 1 the optimizer step is
exactly W_l <- s_l W_l (at lr eta it is W_l <- W_l (1 - eta (1 - s_l)), a partial step; lr 0 changes nothing).
Blocks are coupled (a block's input is the previous block's spikes), so the rates settle over a few ticks; the
rule records ``rate_matched.l{l}.rate`` / ``.target`` / ``.scale`` every tick. Nothing else trains: parameters
outside the encoder get no update (as under ``frozen``).

Where the targets come from (exactly one of):

* ``target_rates``: a rate per block (one number = every block), spikes per neuron and bin in [0, 1];
* ``from_run``: a finished run folder, typically an ESPP run of the same protocol and model: the targets are
  its last evaluation's ``layer_readout_spikes`` (summary.json; mean spikes per neuron and view on the probe
  images) divided by its ``model.T`` (config.yaml), one per LIF layer (``layer_readout_names`` ``layer1``..).
  The match is then on rates measured on held-out images for the target and on the training stream here, the
  same distribution of images.

Refused before step 0: a model without spiking blocks (it provides no ``spikes``), a target count that is not 1
or the number of blocks, a run folder without per-layer read-outs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import Field, model_validator

from colsim.config import ConfigError, Strict
from colsim.registry import register_rule
from colsim.rule import Rule

__all__ = ["RateMatchedConfig", "rate_matched", "rates_from_run", "rate_scale"]


class RateMatchedConfig(Strict):
    name: Literal["rate_matched"] = "rate_matched"
    target_rates: Optional[list[float]] = Field(None, description="spikes per neuron and bin, per LIF block (or one)")
    from_run: Optional[str] = Field(None, description="a run folder whose last per-layer read-out rates are the targets")
    gain: float = Field(0.5, gt=0, le=1, description="exponent of the multiplicative step (r* / r) ** gain")
    max_step: float = Field(2.0, gt=1, description="the largest rescaling of one tick, and 1 / the smallest")

    @model_validator(mode="after")
    def _one_source(self) -> "RateMatchedConfig":
        if (self.target_rates is None) == (self.from_run is None):
            raise ValueError("give the target firing rates either as target_rates (per LIF block) or as from_run "
                             "(a run folder, e.g. of ESPP), exactly one of them")
        if self.target_rates is not None and not all(0 < r <= 1 for r in self.target_rates):
            raise ValueError(f"target_rates: spikes per neuron and bin, each in (0, 1], got {self.target_rates}")
        return self


def rates_from_run(run_dir: str) -> list[float]:
    """Per LIF layer, the firing rate (spikes per neuron and bin) at a run's last evaluation: summary.json's
    ``layer_readout_spikes`` of ``layer1``.. divided by config.yaml's ``model.T``."""
    import yaml

    d = Path(run_dir)
    try:
        s = json.loads((d / "summary.json").read_text())
        T = int(yaml.safe_load((d / "config.yaml").read_text())["model"]["T"])  # the resolved config's time bins
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"rule.from_run: {run_dir} is not a finished run folder with a spiking model "
                          f"({type(exc).__name__}: {exc})") from None
    names, spikes = s.get("layer_readout_names"), (s.get("layer_readout_spikes") or [None])[-1]
    if not names or spikes is None:
        raise ConfigError(f"rule.from_run: {run_dir}/summary.json has no per-layer read-outs (layer_readout_spikes); "
                          f"use a run of a model that reads its layers out (echospike_mlp)")
    layers = sorted(int(n[len("layer"):]) for n in names if n.startswith("layer"))
    if layers != list(range(1, len(layers) + 1)):
        raise ConfigError(f"rule.from_run: {run_dir} reads out layers {layers}, not every layer 1..L; rerun it with "
                          f"model.readout_layers unset")
    by_name = dict(zip(names, spikes))
    return [by_name[f"layer{l}"] / T for l in layers]


def rate_scale(rate: float, target: float, gain: float, max_step: float) -> float:
    """The tick's rescaling s = clip((target / rate) ** gain, 1 / max_step, max_step); max_step when silent."""
    if rate <= 0:
        return max_step
    return float(min(max((target / rate) ** gain, 1.0 / max_step), max_step))


@register_rule("rate_matched", RateMatchedConfig)
def rate_matched(cfg: RateMatchedConfig, column=None) -> Rule:
    """Random LIF layers rescaled until each block fires at a target rate (from target_rates or an ESPP run)."""
    blocks = list(getattr(getattr(column, "encoder", None), "blocks", []))
    n = len(blocks)
    targets = rates_from_run(cfg.from_run) if cfg.from_run is not None else list(cfg.target_rates)
    if n and len(targets) == 1:
        targets = targets * n
    if n and len(targets) != n:
        where = "rule.from_run" if cfg.from_run is not None else "rule.target_rates"
        raise ConfigError(f"{where}: {len(targets)} target rates for a column of {n} LIF blocks; give one per block "
                          f"or one for all")
    wnames = [f"encoder.blocks.{l}.synapse.weight" for l in range(n)]

    def init(params):
        return {}

    @torch.no_grad()
    def update(params, state, trace):
        grads, metrics = {}, {"loss.pred": float(trace["loss"].detach())}
        for l, (w, target) in enumerate(zip(wnames, targets)):
            if w not in params:
                continue
            rate = float(trace["spikes"][l].float().mean())
            s = rate_scale(rate, target, cfg.gain, cfg.max_step)
            grads[w] = (1.0 - s) * params[w].detach()  # SGD at lr 1: W <- s W
            metrics.update({f"rate_matched.l{l}.rate": rate, f"rate_matched.l{l}.target": float(target),
                            f"rate_matched.l{l}.scale": s})
        return grads, state, metrics

    return Rule(init, update, frozenset({"spikes", "loss"}))
