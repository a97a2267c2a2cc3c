"""Tests of the affine_digits world: actions reproduce the next view, pools, source-image labels,
determinism, episodes, appearance contexts."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import colsim.protocols  # noqa: F401  (registers the world)
from colsim.config import ConfigError, validate_as
from colsim.protocols import _appearance as ap
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

def test_three_pools_disjoint_and_cover_the_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    w = make()
    tr, va, pr = (set(x.tolist()) for x in (w.train_index, w.validation_index, w.probe_index))
    assert not tr & va and not tr & pr and not va & pr
    assert tr | va | pr == set(range(1797))
    raw = {k: {d.images[i].tobytes() for i in v} for k, v in (("tr", tr), ("va", va), ("pr", pr))}
    assert not raw["tr"] & raw["va"] and not raw["tr"] & raw["pr"] and not raw["va"] & raw["pr"]
    # stratified, per class k = round(fraction * n): class 0 has 178 images -> 53 probe, 27 validation,
    # 98 train; class 1 has 182 -> 55, 27, 100
    assert np.bincount(w.probe_labels.numpy(), minlength=10)[:2].tolist() == [53, 55]
    assert np.bincount(w.validation_labels.numpy(), minlength=10)[:2].tolist() == [27, 27]
    assert np.bincount(w.train_labels.numpy(), minlength=10)[:2].tolist() == [98, 100]
    assert torch.equal(w.train_labels, torch.as_tensor(d.target)[w.train_index])
    assert torch.equal(w.validation_images, ad._canonical(32)[0][w.validation_index])
    assert torch.equal(make().probe_index, w.probe_index)  # deterministic
    assert not torch.equal(make(split_seed=1).probe_index, w.probe_index)
    # the probe pool does not depend on the validation pool: validation images come out of train
    two = make(validation_fraction=0.0)
    assert torch.equal(two.probe_index, w.probe_index) and len(two.validation_index) == 0
    assert set(two.train_index.tolist()) == tr | va
    assert torch.equal(make(validation_fraction=0.3).probe_index, w.probe_index)
    with pytest.raises(ValidationError):
        AffineDigitsConfig(probe_fraction=0.6, validation_fraction=0.4)


def test_image_labels_are_dataset_rows_of_the_source_digit():
    """Step and ProbeSet labels['image'] index load_digits(); re-rendering that digit with the labelled
    view parameters reproduces the observation exactly."""
    from sklearn.datasets import load_digits

    target = torch.as_tensor(load_digits().target)
    canon = ad._canonical(32)[0]  # (1797, 1, 32, 32)
    w = make()
    for st in run(w, 6, batch=8, length=3):
        img = st.labels["image"]
        assert img.shape == (8,) and img.dtype == torch.long
        assert set(img.tolist()) <= set(w.train_index.tolist())
        assert torch.equal(st.labels["class"], target[img])
        assert torch.equal(st.obs, ad._warp(canon[img], st.labels["angle"], st.labels["scale"], st.labels["shift"]))
    for pool, index in (("probe", w.probe_index), ("validation", w.validation_index)):
        ps = w.probe_set([2, 5], 30, 3, torch.Generator().manual_seed(0), {}, pool=pool)
        img = ps.labels["image"]
        assert img.shape == (30,) and set(img.tolist()) <= set(index.tolist())
        assert torch.equal(ps.labels["class"], target[img])
        src = canon[img][:, None].expand(30, 3, 1, 32, 32).reshape(90, 1, 32, 32)
        again = ad._warp(src, ps.labels["angle"].flatten(), ps.labels["scale"].flatten(),
                         ps.labels["shift"].flatten(0, 1)).reshape(30, 3, 1, 32, 32)
        assert torch.equal(ps.obs, again)


def test_probe_set_draws_images_without_replacement_as_far_as_the_pool_allows():
    w = make()
    # 2 classes x 100 episodes; probe pool: 53 images of class 0, 55 of class 1 -> every image is used,
    # once or twice (floor / ceil of 100 / 53 and 100 / 55), 108 distinct images
    ps = w.probe_set([0, 1], 200, 2, torch.Generator().manual_seed(0), {})
    img, cls = ps.labels["image"], ps.labels["class"]
    assert len(set(img.tolist())) == 108
    assert set(img.tolist()) == set(w.probe_index[w.probe_labels <= 1].tolist())
    for c, pool in ((0, 53), (1, 55)):
        counts = np.bincount(img[cls == c].numpy())
        counts = counts[counts > 0]
        assert len(counts) == pool and counts.min() == 1 and counts.max() == 2 and counts.sum() == 100
    # 10 classes x 20 episodes <= every class's pool: all 200 images distinct
    assert len(set(w.probe_set(None, 200, 2, torch.Generator().manual_seed(1), {}).labels["image"].tolist())) == 200
    # validation pool: 27 images of class 0 for 40 episodes -> 27 distinct, used once or twice
    pv = w.probe_set([0], 40, 2, torch.Generator().manual_seed(0), {}, pool="validation")
    counts = np.bincount(pv.labels["image"].numpy())
    assert (counts > 0).sum() == 27 and counts.max() == 2


def test_validation_pool_probe_sets_and_empty_pools():
    w = make()
    g = torch.Generator
    pv = w.probe_set(None, 50, 2, g().manual_seed(0), {}, pool="validation")
    pp = w.probe_set(None, 50, 2, g().manual_seed(0), {})
    assert not set(pv.labels["image"].tolist()) & set(pp.labels["image"].tolist())
    assert torch.equal(pv.labels["class"], pp.labels["class"])  # same generator: same class order
    with pytest.raises(ConfigError, match=r"^protocol\.phases\[1\]\.classes: the world's validation pool has no "
                                          r"image of class 3 .*validation_fraction"):
        make(validation_fraction=0.0).probe_set([3], 20, 2, g().manual_seed(0), {}, pool="validation",
                                                where="protocol.phases[1]")
    for bad in ([12], [], [-1, 2]):
        with pytest.raises(ConfigError, match=r"^protocol\.phases\[2\]\.classes: must be a non-empty subset"):
            w.probe_set(bad, 20, 2, g().manual_seed(0), {}, where="protocol.phases[2]")
    with pytest.raises(ConfigError, match=r"^protocol\.phases\[0\]\.world\.validation_fraction: cannot change"):
        w.check_phase(None, {"validation_fraction": 0.2}, where="protocol.phases[0]")
    with pytest.raises(ConfigError, match="pool must be one of probe, validation"):
        w.probe_set(None, 20, 2, g().manual_seed(0), {}, pool="train")
    assert w.check_phase([5, 1, 5], {"appearance": "invert"}) == [1, 5]


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


def test_same_class_episodes_change_the_image_not_the_class():
    """episodes: same_class (EchoSpike's same-class pairing): within an episode every view shows another
    train image of the episode's class; the start flags, episodes, view parameters and the draws that
    pick each new episode are those of same_image episodes."""
    B, L, T = 16, 4, 40
    w_img, w_cls = make(), make(episodes="same_class")
    a, b = run(w_img, T, batch=B, length=L, seed=5), run(w_cls, T, batch=B, length=L, seed=5)
    changed = kept = 0
    for t in range(T):
        for k in ("episode", "class", "angle", "scale", "shift"):
            assert torch.equal(a[t].labels[k], b[t].labels[k])
        assert torch.equal(a[t].start, b[t].start) and torch.equal(a[t].action, b[t].action)
        if t == 0:
            continue
        inside = ~b[t].start  # (B,) the view continues an episode
        assert torch.equal(b[t].labels["class"][inside], b[t - 1].labels["class"][inside])
        assert torch.equal(a[t].labels["image"][inside], a[t - 1].labels["image"][inside])  # same_image
        same = b[t].labels["image"][inside] == b[t - 1].labels["image"][inside]
        changed, kept = changed + int((~same).sum()), kept + int(same.sum())
        # the image shown is the source image of its label
        row = b[t].labels["image"][0]
        assert int(w_cls.train_labels[w_cls.train_index == row]) == int(b[t].labels["class"][0])
    # ~1 / 126 of the class's train images repeat by chance: nearly every view shows a new image
    assert changed > 0.95 * (changed + kept)
    starts = torch.stack([s.start for s in b[1:]])  # the images of new episodes are drawn as for same_image
    first_img = torch.stack([s.labels["image"] for s in b[1:]])[starts]
    assert torch.equal(first_img, torch.stack([s.labels["image"] for s in a[1:]])[starts])
    with pytest.raises(ValidationError):
        make(episodes="same_object")


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


# ---- (8) appearance contexts --------------------------------------------------------------------

def _tiny_image():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    x[0, 0, 0, 4] = 0.5
    x[0, 0, 4, 0] = 0.25
    return x


def test_appearance_pixels_by_hand():
    x = _tiny_image()
    # thick: 3x3 max filter, stride 1, same size (outside the canvas counts as nothing)
    assert ap.thicken(x, 3)[0, 0].tolist() == [
        [0.0, 0.0, 0.0, 0.5, 0.5],
        [0.0, 1.0, 1.0, 1.0, 0.5],
        [0.0, 1.0, 1.0, 1.0, 0.0],
        [0.25, 1.0, 1.0, 1.0, 0.0],
        [0.25, 0.25, 0.0, 0.0, 0.0]]
    cfg = AffineDigitsConfig
    # invert: 1 - x
    inv = ap.after_warp(x, cfg(appearance="invert"), None)[0, 0]
    assert inv[2, 2] == 0.0 and inv[0, 4] == 0.5 and inv[4, 0] == 0.75 and inv[1, 1] == 1.0
    # gamma 0.5: 0.25 -> 0.5, 0.5 -> 0.70710..., 1 -> 1, 0 -> 0
    gam = ap.after_warp(x, cfg(appearance="gamma", gamma=0.5), None)[0, 0]
    assert gam[4, 0] == 0.5 and abs(gam[0, 4].item() - 0.7071068) < 1e-6 and gam[2, 2] == 1 and gam[1, 1] == 0
    # blur sigma 0.5: r = ceil(1.5) = 2, taps exp(-2 x^2) / (1 + 2 e^-2 + 2 e^-8) = (0.000264, 0.106451, 0.786571, ...)
    k = ap.gaussian_kernel(0.5)
    assert torch.allclose(k, torch.tensor([0.00026387, 0.10645077, 0.78657073, 0.10645077, 0.00026387]), atol=1e-7)
    imp = torch.zeros(1, 1, 5, 5)
    imp[0, 0, 2, 2] = 1.0
    b = ap.blur(imp, 0.5)[0, 0]  # the impulse response is the outer product of the taps
    assert abs(b[2, 2].item() - 0.61869351) < 1e-6  # 0.786571^2
    assert abs(b[2, 3].item() - 0.08373106) < 1e-6 and abs(b[1, 2].item() - 0.08373106) < 1e-6  # 0.786571 * 0.106451
    assert abs(b[1, 1].item() - 0.01133177) < 1e-6  # 0.106451^2
    corner = torch.zeros(1, 1, 5, 5)
    corner[0, 0, 0, 0] = 1.0
    assert abs(ap.blur(corner, 0.5)[0, 0, 0, 0].item() - 0.61869351) < 1e-6  # zero padding: the mass outside is lost
    # blur_noise with noise_std 0: the blur alone; with noise: blur + std * N(0, 1) from the generator, clamped
    assert torch.equal(ap.after_warp(imp, cfg(appearance="blur_noise", blur_sigma=0.5, noise_std=0.0),
                                     torch.Generator().manual_seed(0)), ap.blur(imp, 0.5))
    noisy = ap.after_warp(imp, cfg(appearance="blur_noise", blur_sigma=0.5, noise_std=0.2),
                          torch.Generator().manual_seed(0))
    n = torch.randn(1, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, (ap.blur(imp, 0.5) + 0.2 * n).clamp(0, 1))
    assert noisy.min() == 0.0 and noisy.max() <= 1.0 and (noisy == 0).any()  # clamped
    assert torch.equal(ap.after_warp(x, cfg(), None), x) and torch.equal(ap.before_warp(x, cfg()), x)


@pytest.mark.parametrize("appearance", ["none", "invert", "blur_noise", "thick", "gamma"])
def test_appearance_applies_to_streams_and_probe_sets(appearance):
    """A phase's appearance override changes stream and probe views exactly as its function says,
    and nothing else (same images, view parameters and actions); deterministic under the generator."""
    w = make(image_size=16)
    canon = ad._canonical(16)[0]
    ov = {"appearance": appearance}
    cfg = AffineDigitsConfig(image_size=16, appearance=appearance)

    def expected(img, lab, g):
        src = ap.before_warp(canon[img], cfg)
        return ap.after_warp(ad._warp(src, lab["angle"], lab["scale"], lab["shift"]), cfg, g)

    stream = w.stream(6, 3, None, ov)
    state = stream.init(torch.Generator().manual_seed(5))
    for _ in range(4):
        g = ad.generator_from_state(state["rng"])  # the generator the step draws its noise from
        state, st = stream.step(state)
        assert torch.equal(st.obs, expected(st.labels["image"], st.labels, g))
    plain = run(w, 4, batch=6, length=3, seed=5)
    mine = run(w, 4, batch=6, length=3, overrides=ov, seed=5)
    assert torch.equal(plain[0].labels["image"], mine[0].labels["image"])
    assert torch.equal(plain[0].action, mine[0].action)
    assert all(_same(a, b) for a, b in zip(mine, run(w, 4, batch=6, length=3, overrides=ov, seed=5)))

    p0 = w.probe_set([1, 7], 10, 2, torch.Generator().manual_seed(2), {})
    ps = w.probe_set([1, 7], 10, 2, torch.Generator().manual_seed(2), ov)
    assert torch.equal(ps.labels["image"], p0.labels["image"]) and torch.equal(ps.actions, p0.actions)
    g = torch.Generator().manual_seed(2)  # replay the probe set's draws, then the noise comes next
    torch.randperm(10, generator=g)  # class order
    for c in (1, 7):
        torch.randperm(int((w.probe_labels == c).sum()), generator=g)  # each class's image order
    torch.rand(10, 2, 4, generator=g)  # view parameters
    lab = {k: ps.labels[k].flatten(0, 1) for k in ("angle", "scale", "shift")}
    img = ps.labels["image"].repeat_interleave(2)
    assert torch.equal(ps.obs.flatten(0, 1), expected(img, lab, g))
    if appearance == "invert":
        assert ps.obs[..., 0, 0].eq(1.0).all() and st.obs[..., 0, 0].eq(1.0).all()  # background turns white
    if appearance != "none":
        assert not torch.equal(ps.obs, p0.obs)
