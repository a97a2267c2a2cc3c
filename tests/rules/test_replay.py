"""Reservoir replay: sampling statistics, trace merging, the wrapper's buffer and determinism."""
from __future__ import annotations

import io

import torch

from colsim.rules.replay import merge_traces, reservoir_slots
from colsim.simulate import _seeded
from colsim.types import Trace
from _tiny import build_tiny


def _reservoir(N: int, K: int, gen: torch.Generator, chunk: int = 4) -> torch.Tensor:
    buf = torch.full((K,), -1, dtype=torch.long)
    n = 0
    while n < N:
        k = min(chunk, N - n)
        slots = reservoir_slots(n, k, K, gen)
        for i, s in enumerate(slots.tolist()):
            if s >= 0:
                buf[s] = n + i
        n += k
    return buf


def test_reservoir_keeps_each_item_with_probability_K_over_N():
    N, K, trials = 24, 6, 1500
    gen = torch.Generator().manual_seed(1234)
    counts = torch.zeros(N)
    for _ in range(trials):
        counts[_reservoir(N, K, gen)] += 1
    p = counts / trials
    sd = (K / N * (1 - K / N) / trials) ** 0.5
    assert bool(((p - K / N).abs() < 4.5 * sd).all()), p


def test_reservoir_inserts_item_n_with_probability_K_over_n_plus_1():
    K, trials = 5, 3000
    gen = torch.Generator().manual_seed(7)
    for n in (5, 9, 19, 99):  # the item with index n (n items seen before it)
        hits = sum(int(reservoir_slots(n, 1, K, gen)[0] >= 0) for _ in range(trials))
        p, q = hits / trials, K / (n + 1)
        assert abs(p - q) < 4.5 * (q * (1 - q) / trials) ** 0.5, (n, p, q)
    # the first K items always go to their own slot
    assert reservoir_slots(0, K, K, gen).tolist() == list(range(K))


def test_merge_traces_concatenates_and_weights_loss():
    live = Trace(z=torch.zeros(3, 2), valid=torch.tensor([True, True, False]), loss=torch.tensor(1.0),
                 layers=[torch.zeros(3, 4)], inputs={"obs": torch.zeros(3, 1, 2, 2)}, local=torch.tensor(True))
    rep = Trace(z=torch.ones(2, 2), valid=torch.tensor([True, False]), loss=torch.tensor(4.0),
                layers=[torch.ones(2, 4)], inputs={"obs": torch.ones(2, 1, 2, 2)}, local=torch.tensor(True))
    m = merge_traces(live, rep)
    assert m["z"].shape == (5, 2) and m["layers"][0].shape == (5, 4) and m["inputs"]["obs"].shape == (5, 1, 2, 2)
    assert m["valid"].tolist() == [True, True, False, True, False]
    assert float(m["loss"]) == (2 * 1.0 + 1 * 4.0) / 3  # the mean over the valid entries of the concatenation


def _run(spec, steps=6, seed=0, extra=()):
    cfg, world, column, rule, local, opt = build_tiny(spec, extra=list(extra), seed=seed)
    params = column.trainable()
    state = rule.init(params)
    stream = world.stream(cfg.protocol.stream.batch, cfg.protocol.stream.episode_length, [0, 1], {})
    ss = stream.init(_seeded(seed, 1))
    cs = column.init_state(cfg.protocol.stream.batch, "cpu")
    for t in range(steps):
        ss, st = stream.step(ss)
        cs, trace = column(cs, st.obs, st.action, st.start | (t == 0), local=local)
        trace["labels"] = st.labels
        grads, state, metrics = rule.update(params, state, trace)
        for n, p in params.items():
            p.grad = grads.get(n)
        opt.step()
    return state, metrics


def test_replay_buffer_fills_histogram_and_roundtrips():
    state, m = _run("lpl+replay", extra=["rule.wrap[0].capacity=12"])
    assert state["filled"] == 12 and state["seen"] > 12
    assert state["buf"]["obs"].shape == (12, 1, 16, 16) and state["buf"]["obs_ctx"].shape[:2] == (12, 3)
    hist = [m[f"replay.hist.{c}"] for c in range(10)]
    assert sum(hist) == 12 and hist[0] + hist[1] == 12  # only digits 0/1 were streamed
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert torch.equal(back["rng"], state["rng"]) and torch.equal(back["buf"]["obs"], state["buf"]["obs"])


def test_replay_is_deterministic_under_its_seed():
    s1, _ = _run("backprop+replay", extra=["rule.wrap[0].capacity=10"])
    s2, _ = _run("backprop+replay", extra=["rule.wrap[0].capacity=10"])
    assert torch.equal(s1["buf"]["obs"], s2["buf"]["obs"]) and torch.equal(s1["rng"], s2["rng"])


def test_a_buffer_smaller_than_the_batch_replays_all_of_itself_once_full():
    """capacity 3 < the live batch (8): replay used to wait for 8 stored items, i.e. never started; now it replays
    the 3 it holds from the step after they are stored on."""
    _, m1 = _run("backprop+replay", steps=1, extra=["rule.wrap[0].capacity=3"])
    assert m1["replay.replayed"] == 0.0  # nothing stored before the first step
    state, m = _run("backprop+replay", steps=4, extra=["rule.wrap[0].capacity=3"])
    assert state["filled"] == 3 and m["replay.replayed"] == 3.0
    _, big = _run("backprop+replay", steps=4, extra=["rule.wrap[0].capacity=100"])
    assert big["replay.replayed"] == 8.0  # the live batch size, as before
