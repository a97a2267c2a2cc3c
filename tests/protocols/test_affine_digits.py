"""Tests of the affine_digits world: actions reproduce the next view, pools, determinism, episodes."""
from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import colsim.protocols  # noqa: F401  (registers the world)
from colsim.config import ConfigError, validate_as
from colsim.protocols import affine_digits as ad
from colsim.protocols.affine_digits import AffineDigits, AffineDigitsConfig, affine_digits
from colsim.registry import WORLDS


def make(**kw) -> AffineDigits:
    return affine_digits(AffineDigitsConfig(**kw))


def run(world, steps, batch=16, length=4, classes=None, overrides=None, seed=0):
    stream = world.stream(batch, length, classes, overrides or {})
    state = stream.init(torch.Generator().manual_seed(seed))
    out = []
    for _ in range(steps):
        state, step = stream.step(state)
        out.append(step)
    return out


def masked_errors(world, cur, nxt, act):
    """Per-pair MAE between apply_action(cur, act) and nxt where the source lies inside cur's frame."""
    pred = world.apply_action(cur, act)
    mask = (world.apply_action(torch.ones_like(cur), act) > 0.999).float()  # interior: no border bleed
    n = mask.sum((1, 2, 3)).clamp(min=1)
    return ((pred - nxt).abs() * mask).sum((1, 2, 3)) / n, (nxt * mask).sum((1, 2, 3)) / n


# ---- (1) the action reproduces the next view ------------------------------------------------

@pytest.mark.parametrize("mode", ["affine", "rotation_only"])
def test_action_reproduces_next_view(mode):
    w = make(mode=mode)
    steps = run(w, 9, batch=64, length=4)
    cur = torch.cat([s.obs for s in steps[:-1]])
    nxt = torch.cat([s.obs for s in steps[1:]])
    act = torch.cat([s.action for s in steps[:-1]])
    keep = act.abs().sum(1) > 0  # not the last view of an episode
    assert keep.sum() > 300
    cur, nxt, act = cur[keep], nxt[keep], act[keep]
    err, level = masked_errors(w, cur, nxt, act)
    wrong, _ = masked_errors(w, cur, nxt, act.roll(1, 0))  # control: another pair's action
    rel = err.mean() / level.mean()
    # measured: ~0.07 (affine) / ~0.03 (rotation_only) of the mean intensity, from double
    # bilinear interpolation; a wrong action gives ~20x the error
    assert rel < 0.15, rel
    assert wrong.mean() > 8 * err.mean(), (wrong.mean(), err.mean())
    assert (err < 0.5 * level.clamp(min=1e-3)).float().mean() > 0.95  # nearly every pair, not just on average


def test_action_composes_absolute_labels_exactly():
    """a_t applied to (angle, scale, shift)_t gives (angle, scale, shift)_{t+1}: the encoding is g = A' A^-1."""
    w = make()
    steps = run(w, 12, batch=32, length=5)
    for a, b in zip(steps[:-1], steps[1:]):
        keep = a.action.abs().sum(1) > 0
        act = a.action[keep]
        la, lb = ({k: v[keep] for k, v in x.labels.items()} for x in (a, b))
        dth, ds = torch.atan2(act[:, 0], act[:, 1]), torch.exp(act[:, 4])
        u = act[:, 2:4] * w.shift_unit
        c, s = torch.cos(dth), torch.sin(dth)
        t = la["shift"]
        t_next = ds[:, None] * torch.stack([c * t[:, 0] - s * t[:, 1], s * t[:, 0] + c * t[:, 1]], -1) + u
        assert torch.allclose(t_next, lb["shift"], atol=1e-4)
        assert torch.allclose(la["scale"] * ds, lb["scale"], rtol=1e-5)
        d = torch.remainder(la["angle"] + dth - lb["angle"] + math.pi, 2 * math.pi) - math.pi
        assert d.abs().max() < 1e-5
        assert torch.allclose(act[:, 0] ** 2 + act[:, 1] ** 2, torch.ones(len(act)), atol=1e-5)


def test_probe_set_actions_reproduce_next_view():
    w = make()
    ps = w.probe_set([0, 1, 2, 3], 40, 3, torch.Generator().manual_seed(1), {})
    assert ps.obs.shape == (40, 3, 1, 32, 32) and ps.actions.shape == (40, 3, 5)
    assert ps.labels["angle"].shape == (40, 3) and ps.labels["shift"].shape == (40, 3, 2)
    assert (ps.actions[:, -1] == 0).all()
    cur, nxt, act = ps.obs[:, :-1].flatten(0, 1), ps.obs[:, 1:].flatten(0, 1), ps.actions[:, :-1].flatten(0, 1)
    err, level = masked_errors(w, cur, nxt, act)
    assert err.mean() / level.mean() < 0.15


def test_fast_grid_matches_affine_grid():
    mat = torch.randn(7, 2, 3, generator=torch.Generator().manual_seed(0))
    ref = F.affine_grid(mat, [7, 1, 20, 20], align_corners=False)
    mine = (ad._base_grid(20, torch.device("cpu")) @ mat.reshape(14, 3).T).view(20, 20, 7, 2).permute(2, 0, 1, 3)
    assert torch.allclose(mine, ref, atol=1e-6)


def test_view_convention():
    """Documented convention: +angle turns clockwise on screen (y down), shift is in pixels, scale about the centre."""
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 7:9, 12:14] = 1  # a blob 4.5 px right of the centre
    def where(theta, s, t):
        out = ad._warp(img, torch.tensor([theta]), torch.tensor([s]), torch.tensor([t]))[0, 0]
        return torch.nonzero(out > 0.5).float().mean(0).tolist()  # (row, col)
    assert where(math.pi / 2, 1.0, [0.0, 0.0]) == [12.5, 7.5]  # moved below the centre
    assert where(0.0, 1.0, [0.0, 3.0]) == [10.5, 12.5]  # t_y = +3 px: down by 3 rows
    assert where(0.0, 1.0, [-2.0, 0.0]) == [7.5, 10.5]  # t_x = -2 px: left by 2 columns


def test_canonical_images():
    w = make(image_size=28)
    img = w.train_images  # (N, 1, 28, 28)
    assert img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1 and img.max() > 0.9
    cols = (img.sum((0, 1, 2)) > 0).nonzero().flatten()
    assert cols.min() == 4 and cols.max() == 23  # a 20 px box centred in 28 px, like MNIST
    steps = run(make(image_size=20), 2, batch=4)
    assert steps[0].obs.shape == (4, 1, 20, 20) and steps[0].obs.dtype == torch.float32


# ---- (2) pools -------------------------------------------------------------------------------

def test_train_and_probe_pools_disjoint():
    from sklearn.datasets import load_digits

    w = make()
    tr, pr = set(w.train_index.tolist()), set(w.probe_index.tolist())
    assert not tr & pr and len(tr | pr) == 1797
    raw = load_digits().images
    assert not {raw[i].tobytes() for i in tr} & {raw[i].tobytes() for i in pr}
    canon_tr = {x.numpy().tobytes() for x in w.train_images}
    assert not canon_tr & {x.numpy().tobytes() for x in w.probe_images}
    frac = np.bincount(w.probe_labels.numpy(), minlength=10) / np.bincount(load_digits().target, minlength=10)
    assert np.allclose(frac, 0.3, atol=0.01)  # stratified
    assert torch.equal(make().probe_index, w.probe_index)  # deterministic
    assert not torch.equal(make(split_seed=1).probe_index, w.probe_index)
    ps = w.probe_set(None, 100, 2, torch.Generator().manual_seed(0), {})
    assert torch.equal(ps.labels["class"], w.probe_labels[ps.labels["image"]])
    assert len(set(ps.labels["image"].tolist())) == 100  # distinct images while the pool lasts


# ---- (3) determinism --------------------------------------------------------------------------

def _same(a, b):
    return (torch.equal(a.obs, b.obs) and torch.equal(a.action, b.action) and torch.equal(a.start, b.start)
            and all(torch.equal(a.labels[k], b.labels[k]) for k in a.labels))


def test_determinism_and_state_round_trip():
    w = make()
    before = torch.random.get_rng_state()
    a, b, c = run(w, 10, seed=3), run(w, 10, seed=3), run(w, 10, seed=4)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not _same(a[5], c[5])
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is never used

    stream = w.stream(16, 4, None, {})
    state = stream.init(torch.Generator().manual_seed(3))
    for _ in range(5):
        state, _ = stream.step(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["rng"].dtype == torch.uint8
    for i in range(5):
        state, s1 = stream.step(state)
        loaded, s2 = stream.step(loaded)
        assert _same(s1, s2) and _same(s1, a[5 + i])

    p1 = w.probe_set(None, 20, 3, torch.Generator().manual_seed(0), {})
    p2 = w.probe_set(None, 20, 3, torch.Generator().manual_seed(0), {})
    assert torch.equal(p1.obs, p2.obs) and torch.equal(p1.actions, p2.actions)


# ---- (4) classes --------------------------------------------------------------------------------

def test_class_restriction():
    w = make()
    seen = torch.cat([s.labels["class"] for s in run(w, 40, batch=32, classes=[3, 7])])
    assert set(seen.tolist()) == {3, 7}
    ps = w.probe_set([1, 2, 5], 30, 2, torch.Generator().manual_seed(0), {})
    assert np.bincount(ps.labels["class"].numpy(), minlength=10).tolist() == [0, 10, 10, 0, 0, 10, 0, 0, 0, 0]
    with pytest.raises(ConfigError):
        w.stream(4, 4, [11], {})


# ---- (5) episodes -------------------------------------------------------------------------------

def test_start_flags_and_episodes():
    B, L, T = 8, 5, 23
    steps = run(make(), T, batch=B, length=L)
    start = torch.stack([s.start for s in steps])  # (T, B)
    for b in range(B):
        off = b % L  # stream b enters its first episode at view b % L
        expect = [t == 0 or (t + off) % L == 0 for t in range(T)]
        assert start[:, b].tolist() == expect
        for t in range(T):
            last = (t + off) % L == L - 1
            assert (steps[t].action[b] == 0).all() == last
            if t > 0 and not start[t, b]:
                for k in ("class", "image", "episode"):
                    assert steps[t].labels[k][b] == steps[t - 1].labels[k][b]
            if t > 0 and start[t, b]:
                assert steps[t].labels["episode"][b] == steps[t - 1].labels["episode"][b] + 1
    assert start[1:].sum(1).max() < B  # staggered: streams do not all change episode together


# ---- (6) rotation_only and overrides ------------------------------------------------------------

def test_rotation_only():
    steps = run(make(mode="rotation_only"), 60, batch=32, length=4)
    act = torch.cat([s.action for s in steps])
    act = act[act.abs().sum(1) > 0]
    assert (act[:, 2:] == 0).all()  # no translation, log scale 0
    ang = torch.cat([s.labels["angle"] for s in steps])
    assert ang.min() < -math.radians(170) and ang.max() > math.radians(170) and ang.abs().max() <= math.pi
    assert all((s.labels["scale"] == 1).all() and (s.labels["shift"] == 0).all() for s in steps)


def test_overrides_and_inactive_factors():
    w = make()
    steps = run(w, 20, batch=32, overrides={"rotation": 10, "factors": ["rotation", "scale"]})
    ang = torch.cat([s.labels["angle"] for s in steps])
    assert ang.abs().max() <= math.radians(10) + 1e-6
    assert all((s.labels["shift"] == 0).all() for s in steps)
    with pytest.raises(ValidationError):
        w.stream(4, 4, None, {"rotation": -5})
    with pytest.raises(ConfigError):
        w.stream(4, 4, None, {"image_size": 16})


# ---- (7) config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [{"colour": 1}, {"image_size": -1}, {"image_size": 4}, {"scale": (1.0, 0.5)},
                                 {"scale": (0.0, 1.0)}, {"rotation": 200}, {"factors": ["shear"]},
                                 {"mode": "spin"}, {"probe_fraction": 1.0}])
def test_bad_config_rejected(bad):
    with pytest.raises(ValidationError):
        AffineDigitsConfig(**bad)


def test_registered():
    e = WORLDS["affine_digits"]
    assert e.config is AffineDigitsConfig and e.summary
    cfg = validate_as(e.config, {"name": "affine_digits", "image_size": 16}, "protocol.world")
    w = e.factory(cfg)
    assert w.spec.obs_shape == (1, 16, 16) and w.spec.action_dim == 5 and len(w.spec.action_names) == 5
    with pytest.raises(ConfigError):
        validate_as(e.config, {"name": "affine_digits", "bogus": 1}, "protocol.world")


def test_step_speed():
    """Generous bound (the target is well under 2 ms at B=32, S=32) so a loaded machine does not flake."""
    stream = make().stream(32, 8, None, {})
    state = stream.init(torch.Generator().manual_seed(0))
    times = []
    for _ in range(60):
        t = time.perf_counter()
        state, _ = stream.step(state)
        times.append(time.perf_counter() - t)
    assert float(np.median(times[10:])) < 0.01
