"""The device path (issue 15 item 5, colsim/device.py): autocast, channels-last, pinned transfers, --device cuda.

What a CPU can check is checked here on the CPU (torch.autocast runs bf16 on the CPU too); the tests that
need a GPU are marked ``cuda`` and skip without one."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from _tiny import TINY, build_tiny
from colsim import device as dev
from colsim.cli import app
from colsim.config import resolve_run_config
from colsim.record import MemoryRecorder
from colsim.simulate import run

runner = CliRunner()
SETS = [a for s in TINY for a in ("--set", s)]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def test_device_defaults_are_resolved_into_the_config():
    cpu = resolve_run_config("nonstationary", rule="backprop", overrides=TINY)
    assert (cpu.model.autocast, cpu.model.channels_last) == ("none", False)
    gpu = resolve_run_config("nonstationary", rule="backprop", overrides=TINY, device="cuda")
    assert (gpu.model.autocast, gpu.model.channels_last) == ("bf16", True)
    assert gpu.to_dict()["model"]["autocast"] == "bf16"  # config.yaml records what ran
    mlp = resolve_run_config("nonstationary", rule="backprop", overrides=TINY + ["model.encoder.kind=mlp"],
                             device="cuda")
    assert mlp.model.channels_last is False  # not a conv encoder
    given = resolve_run_config("nonstationary", rule="backprop", device="cuda",
                               overrides=TINY + ["model.autocast=fp16", "model.channels_last=false"])
    assert (given.model.autocast, given.model.channels_last) == ("fp16", False)
    assert resolve_run_config("stationary", model="seqjepa_resnet18").model.channels_last is True  # the preset's


def test_bad_autocast_is_one_line_exit_2():
    res = runner.invoke(app, ["validate", "nonstationary", "--set", "model.autocast=fp8"])
    assert res.exit_code == 2
    assert "model.autocast" in res.output and "bf16" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_exits_2(tmp_path):
    res = runner.invoke(app, ["run", "nonstationary", "--device", "cuda", "--quiet", "--out", str(tmp_path / "r"),
                              "--steps", "5", *SETS])
    assert res.exit_code == 2
    assert res.output.strip() == "error: --device cuda: CUDA is not available on this machine; use --device cpu"
    assert not (tmp_path / "r").exists()


def _sim(extra=(), steps=6, rule="backprop", autocast=None, hook=None):
    """Run the tiny column through the simulator on the CPU; returns (losses per step, column, optimizer)."""
    cfg, world, column, r, local, opt = build_tiny(rule, "stationary", ["protocol.evaluation.at_start=false",
                                                                       "protocol.record.probe=false", *extra], steps)
    if hook is not None:
        column.encoder.register_forward_hook(hook)
    rec = MemoryRecorder()
    res = run(column, r, cfg.protocol, rec, world=world, optimizer=opt, seed=0, local=local,
              autocast=cfg.model.autocast if autocast is None else autocast)
    assert res.status == "completed"
    loss = np.array([m.get("loss", np.nan) for _, m in rec.metrics])
    return loss, column, opt


def test_autocast_reaches_the_forward_and_parameters_stay_fp32():
    seen = []

    def hook(mod, inp, out):
        seen.append((out[0].dtype, torch.is_autocast_enabled("cpu")))  # z (B, D)

    loss, column, opt = _sim(["model.autocast=bf16"], hook=hook)
    assert seen and all(s == (torch.bfloat16, True) for s in seen)  # training forwards and the evaluation's embed
    assert all(p.dtype == torch.float32 for p in column.parameters())
    assert all(v.dtype == torch.float32 for st in opt.state.values() for v in st.values() if v.dim())
    assert np.isfinite(loss[~np.isnan(loss)]).all() and (~np.isnan(loss)).sum() >= 3

    seen.clear()
    _sim(["model.autocast=none"], hook=hook)
    assert seen and all(s == (torch.float32, False) for s in seen)


def test_cli_passes_the_configured_autocast(tmp_path, monkeypatch):
    import colsim.simulate as sim

    got = {}
    real = sim.run

    def spy(column, *a, **kw):
        got["autocast"] = kw.get("autocast")
        def hook(mod, inp, out):  # returns None: the output is left alone
            got.setdefault("dtype", out[0].dtype)

        column.encoder.register_forward_hook(hook)
        return real(column, *a, **kw)

    monkeypatch.setattr(sim, "run", spy)
    res = runner.invoke(app, ["run", "stationary", "--quiet", "--out", str(tmp_path / "r"), "--steps", "4", *SETS,
                              "--set", "model.autocast=bf16"])
    assert res.exit_code == 0, res.output
    assert got == {"autocast": "bf16", "dtype": torch.bfloat16}
    assert "autocast: bf16" in (tmp_path / "r" / "config.yaml").read_text()


@pytest.mark.parametrize("rule", ["backprop", "lpl"])
def test_bf16_loss_is_close_to_fp32(rule):
    """Same seed, same stream: bf16 autocast changes the losses in the third digit, not in kind
    (measured on the tiny column, stationary, seed 0: at most 0.006 apart over 5 losses near 1.0, both rules)."""
    fp32, *_ = _sim(["model.autocast=none"], rule=rule)
    bf16, *_ = _sim(["model.autocast=bf16"], rule=rule)
    ok = ~np.isnan(fp32)
    assert (ok == ~np.isnan(bf16)).all() and ok.sum() >= 3
    assert np.abs(bf16[ok] - fp32[ok]).max() < 0.05, (fp32, bf16)
    assert not np.array_equal(bf16[ok], fp32[ok])  # autocast did change the arithmetic


def test_autocast_none_is_the_float32_path():
    assert dev.autocast_context("cpu", "none") is __import__("contextlib").nullcontext
    assert dev.autocast_context("cpu", None) is __import__("contextlib").nullcontext
    a, col_a, _ = _sim(autocast="none")
    b, col_b, _ = _sim(autocast=None)
    np.testing.assert_array_equal(a, b)
    for (n, p), q in zip(col_a.state_dict().items(), col_b.state_dict().values()):
        assert torch.equal(p, q), n


def test_channels_last_is_applied():
    seen = []
    for flag in ("true", "false"):
        cfg, world, column, *_ = build_tiny(extra=[f"model.channels_last={flag}"])
        conv = column.encoder.blocks[1][0]  # (8, 4, 3, 3): with one input channel both layouts are "contiguous"
        assert isinstance(conv, torch.nn.Conv2d)
        w_nhwc = conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
        h = conv.register_forward_hook(lambda m, i, o: seen.append(
            o.is_contiguous(memory_format=torch.channels_last) and not o.is_contiguous()))
        column.embed(torch.randn(2, 3, *world.spec.obs_shape), torch.zeros(2, 3, world.spec.action_dim))
        h.remove()
        assert w_nhwc == (flag == "true") and seen[-1] == (flag == "true")


def test_pinned_memory_only_for_cuda(monkeypatch):
    assert dev.pins_memory("cuda") and dev.pins_memory("cuda:1") and not dev.pins_memory("cpu")

    def no_pin(self, *a, **k):
        raise RuntimeError("pin_memory needs CUDA")

    monkeypatch.setattr(torch.Tensor, "pin_memory", no_pin)
    t = torch.randn(4, 1, 8, 8)
    assert dev.host_to_device(t, "cpu") is t  # never pinned, not copied
    from colsim.stream import ProbeSet

    ps = ProbeSet(t[None], torch.zeros(1, 4, 5), {})
    assert dev.pin_probe_set(ps, "cpu") is ps
    _sim(steps=4)  # a whole CPU run never asks for pinned memory

    calls = []

    class Pinned:  # what pin_memory would return on a CUDA machine; records the copy asked of it
        def to(self, device, non_blocking=False):
            calls.append((device, non_blocking))
            return "on-" + device

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: Pinned())
    assert dev.host_to_device(t, "cuda") == "on-cuda" and calls == [("cuda", True)]


def test_low_precision_grads_are_cast_to_the_parameters_dtype():
    """A rule whose -dW comes out in bf16 (a local rule's matmuls under autocast) still steps float32
    parameters: without the cast the optimizer refuses a bf16 .grad on a float32 parameter."""
    cfg, world, column, r, local, opt = build_tiny("backprop", "stationary", ["protocol.evaluation.at_start=false",
                                                                             "protocol.record.probe=false"], 4)

    def update(params, state, trace):
        g, state, m = r.update(params, state, trace)
        return {n: v.to(torch.bfloat16) for n, v in g.items()}, state, m

    before = {n: p.detach().clone() for n, p in column.trainable().items()}
    res = run(column, r._replace(update=update), cfg.protocol, MemoryRecorder(), world=world, optimizer=opt, seed=0,
              local=local, autocast="bf16")
    assert res.status == "completed"
    assert all(p.dtype == torch.float32 for p in column.parameters())
    assert any(not torch.equal(before[n], p) for n, p in column.trainable().items())


# ----------------------------------------------------------------------------- on a GPU
@cuda
def test_demo_protocol_on_cuda(tmp_path):
    """The README's demo (nonstationary, lpl, default column) for a few steps on CUDA: finite losses and a store."""
    out = tmp_path / "gpu"
    res = runner.invoke(app, ["run", "nonstationary", "--rule", "lpl", "--device", "cuda", "--steps", "20", "--quiet",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    tree = xr.open_datatree(out / "store.zarr", engine="zarr")
    assert tree.attrs["status"] == "completed" and tree.attrs["device"] == "cuda"
    loss = tree["metrics"]["loss"].values
    assert np.isfinite(loss[~np.isnan(loss)]).all() and (~np.isnan(loss)).sum() >= 10
    assert "autocast: bf16" in (out / "config.yaml").read_text()


@cuda
def test_bf16_on_cuda_matches_fp32_in_kind(tmp_path):
    losses = {}
    for a in ("none", "bf16"):
        res = runner.invoke(app, ["run", "nonstationary", "--rule", "backprop", "--device", "cuda", "--steps", "20",
                                  "--quiet", "--out", str(tmp_path / a), "--set", f"model.autocast={a}"])
        assert res.exit_code == 0, res.output
        loss = xr.open_datatree(tmp_path / a / "store.zarr", engine="zarr")["metrics"]["loss"].values
        losses[a] = loss[~np.isnan(loss)]
    assert len(losses["none"]) == len(losses["bf16"]) >= 10
    assert np.isfinite(losses["bf16"]).all()
    assert abs(losses["bf16"].mean() - losses["none"].mean()) < 0.1 * abs(losses["none"].mean()) + 0.02, losses


@cuda
def test_host_to_device_pins_on_cuda(monkeypatch):
    pinned = []
    real = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pinned.append(1) or real(self, *a))
    t = torch.randn(8, 1, 32, 32)
    g = dev.host_to_device(t, "cuda")
    torch.cuda.synchronize()
    assert pinned and g.is_cuda and torch.equal(g.cpu(), t)


@cuda
def test_autocast_on_cuda_activations_bf16():
    cfg, world, column, r, local, opt = build_tiny(extra=["protocol.evaluation.at_start=false"])
    column = column.cuda()
    obs = torch.randn(8, *world.spec.obs_shape, device="cuda")
    with dev.autocast_context("cuda", "bf16")():
        z, _ = column.encoder(obs)
    assert z.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in column.parameters())
    assert math.isfinite(float(z.float().sum()))


@cuda
def test_cuda_float32_run_tracks_the_cpu_run(tmp_path, monkeypatch):
    """The same run (tiny column, backprop, seed 0, float32: ``model.autocast=none``) on the CPU and on CUDA:
    the same initial parameters and stream, so the losses agree step by step up to float rounding. The
    aggregator's dropout is off (its masks come from the CUDA generator on the GPU, another stream of
    numbers: with it the losses differed by 3-19 % on an H200) and so is cuDNN's TF32 (a 10-bit mantissa,
    PyTorch's default for convolutions)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    losses = {}
    for d in ("cpu", "cuda"):
        res = runner.invoke(app, ["run", "nonstationary", "--rule", "backprop", "--device", d, "--steps", "12", "--quiet",
                                  "--out", str(tmp_path / d), "--set", "model.autocast=none",
                                  "--set", "model.aggregator.dropout=0", *SETS])
        assert res.exit_code == 0, res.output
        loss = xr.open_datatree(tmp_path / d / "store.zarr", engine="zarr")["metrics"]["loss"].values
        losses[d] = loss[~np.isnan(loss)]
    cpu, gpu = losses["cpu"], losses["cuda"]
    assert len(cpu) == len(gpu) >= 6  # the losses of 12 steps in 5 phases (a phase's first tick has none)
    rel = np.abs(gpu - cpu) / np.abs(cpu)
    print(f"cuda vs cpu float32, relative loss difference per step: first {rel[0]:.2e}, max {rel.max():.2e}")
    assert rel[0] < 1e-3 and rel.max() < 2e-2, (cpu, gpu)


def _colsim_proc(*args) -> "subprocess.CompletedProcess":
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "colsim.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@cuda
def test_cuda_runs_repeat_and_resume_bit_for_bit(tmp_path):
    """On CUDA (bf16 autocast, channels-last: the device defaults), in fresh processes as `colsim run` starts them:
    the same seed twice gives bit-identical parameters (deterministic algorithms, and the cuBLAS workspace
    setting that ``build_for_run`` sets on CUDA), and a resume from a phase checkpoint, with the stateful rules'
    state (SI importances, the replay buffer and its RNG, metaplastic availabilities) on the GPU, ends where the
    uninterrupted run ends."""
    run = ["run", "nonstationary", "--rule", "backprop+metaplastic+si+replay", "--device", "cuda", "--steps", "10",
           "--seed", "1", "--quiet", *SETS]
    for name in ("a", "b"):
        res = _colsim_proc(*run, "--out", str(tmp_path / name))
        assert res.returncode == 0, res.stderr
    res = _colsim_proc("run", "nonstationary", "--resume", str(tmp_path / "a" / "checkpoints" / "phase02-digits45.pt"),
                       "--out", str(tmp_path / "resumed"), "--quiet")
    assert res.returncode == 0, res.stderr
    final = {n: torch.load(tmp_path / n / "checkpoints" / "phase04-digits89.pt", weights_only=True)["model"]
             for n in ("a", "b", "resumed")}
    for n in ("b", "resumed"):
        diff = max(float((final["a"][k].float() - v.float()).abs().max()) for k, v in final[n].items())
        assert all(torch.equal(final["a"][k], v) for k, v in final[n].items()), (n, diff)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bench_step_device_cuda_without_cuda_exits_2():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_step.py"), "--device", "cuda"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: --device cuda: CUDA is not available on this machine; use --device cpu"
