"""Run ``colsim`` and SIGKILL the process at a chosen moment (tests/test_fault_tolerance.py).

    python tests/_kill_driver.py MODE N -- colsim arguments...

MODE: ``flush`` — in the N-th metrics flush that writes rows, right after its second array write
(the ``metrics`` arrays then differ in length on disk); ``checkpoint`` — in the N-th checkpoint
write, after half of the file's bytes are written; ``step`` — in the N-th optimizer step, before
the parameters change. ``none`` runs to the end.
"""
from __future__ import annotations

import io
import os
import signal
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1:]
    calls = {"n": 0, "write": 0}
    if mode == "flush":
        import zarr

        import colsim.record as R

        flush, setitem = R.ZarrRecorder.flush, zarr.Array.__setitem__

        def counted_flush(self):
            if self._buf:
                calls["n"] += 1
            return flush(self)

        def dying_setitem(self, key, value):
            out = setitem(self, key, value)
            if calls["n"] == n:
                calls["write"] += 1
                if calls["write"] == 2:
                    _die()
            return out

        R.ZarrRecorder.flush, zarr.Array.__setitem__ = counted_flush, dying_setitem
    elif mode == "checkpoint":
        import torch

        save = torch.save

        def dying_save(obj, f, *a, **kw):
            calls["n"] += 1
            if calls["n"] == n:
                buf = io.BytesIO()
                save(obj, buf, *a, **kw)
                data = buf.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                _die()
            return save(obj, f, *a, **kw)

        torch.save = dying_save
    elif mode == "step":
        import colsim.simulate as S

        apply = S.apply_update

        def dying_apply(*a, **kw):
            calls["n"] += 1
            if calls["n"] == n:
                _die()
            return apply(*a, **kw)

        S.apply_update = dying_apply
    elif mode != "none":
        raise SystemExit(f"unknown mode {mode}")
    from colsim.cli import main as cli_main

    sys.argv = ["colsim", *args]
    cli_main()


if __name__ == "__main__":
    main()
