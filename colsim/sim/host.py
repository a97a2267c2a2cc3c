"""Host guards around a run: signals, the garbage collector, glibc's malloc, the global RNGs, seeded generators."""
from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from typing import Optional

import torch

from colsim.checkpoint import rng_states, set_rng_states

__all__ = ["keep_freed_memory", "freeze_gc", "SignalStop", "rng_kept", "seeded", "HostGuards"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_heap_kept: Optional[bool] = None


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep and reuse freed memory instead of returning it to the kernel.

    PyTorch's CPU allocator is plain ``malloc``: every activation above glibc's mmap threshold
    (at most 32 MiB: a ResNet-18 block output at batch 192 is 48 MiB) is a fresh ``mmap`` whose
    pages fault in, zero-filled, on first touch, and are unmapped again when freed — every step.
    With mmap off for the process's main heap and trimming off, the second step reuses the first
    step's pages: seqjepa_resnet18's CPU step takes ~15 % less time, convolution forwards ~2x
    less (``benchmarks/bench_step.py``). Peak memory is the same high-water mark a training loop
    reaches anyway; it is simply not handed back between steps. Process-wide and idempotent;
    ``colsim run`` calls it for CPU runs (``COLSIM_KEEP_FREED_MEMORY=0`` opts out). Returns
    whether it took effect (False off glibc).
    """
    global _heap_kept
    if _heap_kept is not None:
        return _heap_kept
    _heap_kept = False
    if os.environ.get("COLSIM_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _heap_kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _heap_kept


def freeze_gc() -> bool:
    """Move every object alive now (modules, parameters, data, imported libraries: ~10^6 objects) to
    Python's permanent generation for the run (``gc.freeze``; the run unfreezes at its end), so the
    cyclic collector's full collections scan only what the run creates: a full collection over the
    whole heap took ~0.4 s, one such pause every few hundred ticks at B = 1
    (benchmarks/bench_online.py). No effect on any number; ``COLSIM_GC_FREEZE=0`` opts out."""
    if os.environ.get("COLSIM_GC_FREEZE", "1") == "0":
        return False
    gc.freeze()
    return True


class SignalStop:
    """SIGINT / SIGTERM -> ``signum`` set; the simulator stops at the next step boundary. A second
    signal raises KeyboardInterrupt (stop now). Installed only from the main thread."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except (ValueError, OSError):  # not allowed here (embedded interpreter)
                pass

    def uninstall(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


class HostGuards:
    """Context for the whole run: the signal handlers installed and the heap frozen on entry, both given
    back on exit (also on an exception). ``stop.signum`` tells the loop a signal arrived."""

    def __init__(self):
        self.stop = SignalStop()
        self._frozen = False

    def __enter__(self) -> "HostGuards":
        self.stop.install()
        self._frozen = freeze_gc()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop.uninstall()
        if self._frozen:
            gc.unfreeze()
        return False


class rng_kept:
    """Context: the global RNGs are the same after the block as before it (when ``on``)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.saved = rng_states() if self.on else None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            set_rng_states(self.saved)
        return False


def seeded(seed: int, *salt: int) -> torch.Generator:
    """A generator seeded from the run's seed and a salt (7: probe sets, 11: a phase's stream, ...)."""
    s = seed
    for x in salt:
        s = (s * 1_000_003 + x + 1) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(s)
