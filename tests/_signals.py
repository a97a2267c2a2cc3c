"""Stop a CLI run in-process with a signal at a chosen parameter update (fault-tolerance tests)."""
from __future__ import annotations

import os
import signal


def invoke_with_signal_at_update(runner, app, args: list, monkeypatch, at: int, sig: int = signal.SIGTERM):
    """``runner.invoke(app, args)`` with ``sig`` sent to this process just before the ``at``-th
    ``colsim.simulate.apply_update`` call (1-based); the real ``apply_update`` is restored afterwards."""
    import colsim.simulate as S

    calls, apply = [0], S.apply_update

    def signalled_apply(*a, **kw):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), sig)
        return apply(*a, **kw)

    monkeypatch.setattr(S, "apply_update", signalled_apply)
    try:
        return runner.invoke(app, args)
    finally:
        monkeypatch.setattr(S, "apply_update", apply)
