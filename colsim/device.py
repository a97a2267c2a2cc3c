"""The device path: CUDA checks, mixed precision (autocast), channels-last defaults, pinned transfers.

A run's ``device`` (``cpu``, ``cuda`` or ``cuda:N``; ``colsim run --device cuda``) decides:

* **autocast** (``model.autocast``: ``bf16`` | ``fp16`` | ``none``; unset = ``bf16`` on CUDA,
  ``none`` on CPU). The simulator runs the column forward, the rule update (the rule's losses and
  their ``autograd.grad``) and the evaluation's ``embed`` inside
  ``torch.autocast(device_type, dtype)`` (Micikevicius et al. 2018, "Mixed precision training");
  parameters, optimizer state and the applied gradients stay float32 (a rule's bf16 ``-ΔW`` is cast
  to its parameter's dtype before the optimizer step). ``fp16`` has no loss scaling (rules call
  ``torch.autograd.grad`` themselves, so a ``GradScaler`` cannot wrap them): small gradients may
  underflow to 0; prefer ``bf16``, whose exponent range is float32's. ``none`` runs float32 exactly
  as before (CPU runs are bit-identical to runs without this module). The CPU default ``none`` was weighed by
  measurement (``benchmarks/bench_cpu_bf16.py``, docs/guide/gpu.md "bf16 autocast on the CPU"). On a quiet
  2-core AVX512-bf16 host (no AMX), bf16 ran the default column 1.28x and the ResNet-18 1.58x faster, with
  losses within the seed error bar. The default stays ``none`` because ``--ensemble`` refuses autocast, and
  because the demo table, the determinism tests and the CPU results are float32.
* **channels-last** memory format of conv encoders (``model.channels_last``; unset = true on
  CUDA for the cnn / resnet18 encoders, false on CPU).
* **pinned host memory**: stream batches (made on the CPU) are copied to a CUDA device from
  page-locked memory with ``non_blocking=True``, so the copy overlaps the GPU's work; probe sets
  are pinned once. On the CPU nothing is pinned (``pin_memory`` needs CUDA).

Models declare their device-dependent defaults with a ``device_defaults(device) -> dict`` method on
their config; :func:`resolve_device_defaults` fills the fields a config leaves unset (None) when
the run config is built, so the resolved ``config.yaml`` records what ran. A model whose config has
no ``autocast`` field (the spiking columns) runs float32 on every device.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Optional

import torch

from colsim.errors import ConfigError

__all__ = ["is_cuda", "check_device", "resolve_device_defaults", "autocast_dtype", "autocast_context", "pins_memory",
           "host_to_device", "pin_probe_set", "AUTOCAST"]

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def is_cuda(device: "str | torch.device") -> bool:
    return str(device).startswith("cuda")


def check_device(device: str, what: str = "--device", *, where: str = "on this machine", fix: str = "use --device cpu",
                 error: type = ConfigError) -> None:
    """The one CUDA check: ``error`` (one line, exit 2 in the CLI) when ``device`` is CUDA and there is none here.

    ``what`` names the input (``--device cuda``, ``--resume RUN: the run is on cuda``), ``fix`` what to do."""
    if is_cuda(device) and not torch.cuda.is_available():
        raise error(f"{what}: CUDA is not available {where}; {fix}")


def resolve_device_defaults(model_cfg: Any, device: str) -> Any:
    """The model config with its unset (None) device-dependent fields filled by the model's own
    ``device_defaults(device)`` (unchanged when it has none)."""
    fill = getattr(model_cfg, "device_defaults", None)
    if fill is None:
        return model_cfg
    update = {k: v for k, v in fill(device).items() if getattr(model_cfg, k, None) is None}
    return model_cfg.model_copy(update=update) if update else model_cfg


def autocast_dtype(setting: Optional[str]) -> Optional[torch.dtype]:
    """``bf16`` -> torch.bfloat16, ``fp16`` -> torch.float16, ``none`` / None -> None."""
    if setting is None:
        return None
    if setting not in AUTOCAST:
        raise ConfigError(f"model.autocast: must be one of {', '.join(AUTOCAST)}, got {setting!r}")
    return AUTOCAST[setting]


def autocast_context(device: "str | torch.device", setting: Optional[str]) -> Callable[[], ContextManager]:
    """A factory of the context the simulator runs forwards and rule updates in: ``torch.autocast``
    on ``device``'s type with the setting's dtype, or a null context for ``none``."""
    dtype = autocast_dtype(setting)
    if dtype is None:
        return contextlib.nullcontext
    kind = torch.device(device).type
    return lambda: torch.autocast(device_type=kind, dtype=dtype)


def pins_memory(device: "str | torch.device") -> bool:
    """Whether host tensors bound for ``device`` go through page-locked memory (CUDA only)."""
    return is_cuda(device)


def host_to_device(t: torch.Tensor, device: "str | torch.device") -> torch.Tensor:
    """Copy a CPU tensor to ``device``: pinned + ``non_blocking`` to CUDA, a plain ``.to`` otherwise
    (a no-op for the CPU: the same tensor comes back)."""
    if pins_memory(device):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, non_blocking=True)


def pin_probe_set(ps, device: "str | torch.device"):
    """A probe set with its observations and actions in page-locked memory when bound for CUDA (pinned
    once; the evaluations then copy it batch by batch without blocking); the same set otherwise."""
    if not pins_memory(device):
        return ps
    return ps._replace(obs=ps.obs.pin_memory(), actions=ps.actions.pin_memory())
