"""Exclusive locks on output folders and databases, so that two runs never write the same place at once.

A lock is an advisory ``flock`` on a small file inside the folder (``.clipsam.lock``), which records who holds it
(pid, host, start time, command). The operating system releases it when the holder exits, however it exits
(``kill -9`` included), so a stale lock file never blocks a later run. The lock file is opened without following
links and must be a regular file owned by the user (:func:`clipsam.files.open_owned`). Pure standard library; no
torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .errors import LockError
from .files import open_owned

log = logging.getLogger(__name__)

#: Name of the lock file inside a locked folder.
LOCK_NAME = ".clipsam.lock"

__all__ = ["LOCK_NAME", "FolderLock"]


class FolderLock:
    """An exclusive lock on *folder* (created if missing), held from :meth:`acquire` until :meth:`release`.

    Args:
        folder: the folder to lock.
        what: what the folder is, for messages (``output folder``, ``region database``).

    Raises:
        LockError: from :meth:`acquire`, when another process holds the lock (the message names it).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        # never through a link, and only a regular file of this user: another user of a shared OUT could plant a
        # link to one of this user's files, which the holder record below would overwrite
        fd = open_owned(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockError(f"{self.folder}: this {self.what} is in use by another clipsam run ({holder}); wait for "
                            "it to finish, or stop it, then run again") from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv)[:500]}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8", "replace"), 0)
        except OSError as exc:  # a full disk must not stop the lock itself from working
            log.warning("could not record the lock holder in %s: %s", self.path, exc)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the lock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # pragma: no cover - best effort
        self.release()


def _lock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(str(exc)) from exc
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
            f"{info.get('command', '')}").strip()
