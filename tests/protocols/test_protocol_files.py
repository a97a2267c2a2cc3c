"""The packaged protocols: action_shift changes the transform per phase, context_shift the appearance;
both keep nonstationary's stream / evaluation / recording settings; every phase's probe set comes
from that phase's world."""
from __future__ import annotations

import math

import pytest
import torch

import colsim.protocols  # noqa: F401  (registers the world)
from colsim import registry
from colsim.build import build_world
from colsim.config import load_protocol, resolve_run_config

SHIFTS = ("action_shift", "context_shift")


def _world_and_phases(name):
    cfg = resolve_run_config(name)
    return build_world(cfg), cfg.protocol


def test_listed_and_shaped_like_nonstationary():
    assert {"stationary", "nonstationary", *SHIFTS} <= set(registry.preset_names("protocols"))
    base = load_protocol("nonstationary")
    for name in SHIFTS:
        p = load_protocol(name)
        assert p["name"] == name
        for key in ("world", "stream", "evaluation", "record", "model"):
            assert p[key] == base[key], (name, key)
        steps = [ph["steps"] for ph in p["phases"]]
        assert steps == [250] * 4 and sum(steps) == 1000  # as long as nonstationary (5 x 200)
        assert all("classes" not in ph for ph in p["phases"])  # all ten digits in every phase
        assert len({ph["name"] for ph in p["phases"]}) == 4


def test_action_shift_one_transform_per_phase():
    world, proto = _world_and_phases("action_shift")
    assert [ph.world["factors"] for ph in proto.phases] == [["rotation"], ["translation"], ["scale"], ["rotation"]]
    g = torch.Generator
    for j, ph in enumerate(proto.phases):
        ps = world.probe_set(ph.classes, 60, 3, g().manual_seed(j), ph.world)
        stream = world.stream(16, 4, ph.classes, ph.world)
        state = stream.init(g().manual_seed(j))
        steps = []
        for _ in range(6):
            state, st = stream.step(state)
            steps.append(st)
        for lab in (ps.labels, {k: torch.cat([s.labels[k] for s in steps]) for k in ("angle", "shift", "scale")}):
            moving = {"rotation": lab["angle"].abs().max() > 0.5,  # radians: the range is +-75 deg
                      "translation": lab["shift"].abs().max() > 2.0,  # pixels: the range is +-8 px at 32 px
                      "scale": lab["scale"].min() < 0.8}
            assert [f for f, on in moving.items() if on] == ph.world["factors"], (j, moving)
            assert lab["angle"].abs().max() <= math.radians(75) + 1e-6
        assert sorted(set(ps.labels["class"].tolist())) == list(range(10))
        act = ps.actions[:, :-1].flatten(0, 1)  # (N (V-1), 5): only the active factor's action moves
        assert (act[:, 2:4].abs().max() > 0) == (ph.world["factors"] == ["translation"])
        assert (act[:, 4].abs().max() > 0) == (ph.world["factors"] == ["scale"])
        assert (act[:, 0].abs().max() > 0) == (ph.world["factors"] == ["rotation"])


def test_context_shift_one_appearance_per_phase():
    world, proto = _world_and_phases("context_shift")
    assert [ph.world["appearance"] for ph in proto.phases] == ["none", "invert", "blur_noise", "thick"]
    sets = [world.probe_set(ph.classes, 40, 2, torch.Generator().manual_seed(0), ph.world) for ph in proto.phases]
    plain, inverted, noisy, thick = sets
    # the same generator draws the same episodes; only the picture changes
    for ps in sets[1:]:
        assert torch.equal(ps.labels["image"], plain.labels["image"]) and torch.equal(ps.actions, plain.actions)
    assert torch.equal(inverted.obs, 1 - plain.obs)
    corner = (..., slice(0, 2), slice(0, 2))  # background pixels
    assert plain.obs[corner].max() == 0 and noisy.obs[corner].max() > 0.05  # noise on the background
    assert thick.obs.mean() > 1.3 * plain.obs.mean()  # dilated strokes cover more of the canvas
    assert (thick.obs >= plain.obs - 1e-6).float().mean() > 0.97  # dilation does not darken (up to resampling)


@pytest.mark.parametrize("name", SHIFTS)
def test_phases_validate(name):
    cfg = resolve_run_config(name, rule="backprop", steps=8)
    world = build_world(cfg)
    for j, ph in enumerate(cfg.protocol.phases):
        assert world.check_phase(ph.classes, ph.world, where=f"protocol.phases[{j}]") == list(range(10))
