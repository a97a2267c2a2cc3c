"""The one folder lock: ``flock`` on a file in the folder, held while a process writes there.

``colsim run`` holds ``RUN_DIR/.lock`` for a run's lifetime and a sweep holds ``DIR/.sweep.lock``; a second
writer gets a one-line :class:`~colsim.errors.ConfigError` naming the holder's pid. The kernel releases the lock
when the holder closes it or dies (even by ``kill -9``), so a crash never leaves a folder locked.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable, Optional

from colsim.errors import ConfigError

__all__ = ["FolderLock"]


class FolderLock:
    """``FolderLock(path, busy, where)``: ``busy(holder_pid)`` and ``where`` word the errors (what is locked, and
    the fix). A context manager; :meth:`acquire` / :meth:`close` for a lock held across calls."""

    def __init__(self, path: Path, busy: Callable[[str], str], where: str):
        self.path, self.busy, self.where = Path(path), busy, where
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"{self.where}: cannot write its lock file {self.path.name} ({exc.strerror or exc})") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(self.busy(holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
