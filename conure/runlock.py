"""One writer per run directory.

``conure train`` (and ``--resume``, ``--overwrite``, ``conure demo``) holds an OS lock on ``DIR/.conure.lock`` for
the life of the run: ``fcntl.flock`` on an open file, so the kernel drops it when the process ends however it ends
(SIGKILL, OOM kill, a crash): there is never a stale lock to clean up. The file stays in the run directory; only a
directory the lock created and nothing else was written to (a run that failed on its config or data) is removed
again. A writer that locked a file which was unlinked meanwhile checks the inode and tries again, so two writers
can never hold two different files of one path. The holder writes its pid, host and start time into the file so that
a refused writer can say who holds the run.

Readers (``eval``, ``inspect``, ``predict``, ``export``) take no lock: checkpoints are written to a temp file and
renamed (:class:`conure.checkpoint.AtomicWriter`), so a reader sees the previous checkpoint or the next, never half
of one. Under torchrun only rank 0 takes the lock (it alone writes the directory).

Limits: ``flock`` is advisory (a process that does not ask is not stopped) and on some network filesystems (older
NFS) it is local to one host; two hosts writing one NFS directory are not detected there.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Type

__all__ = ["LOCK_NAME", "RunLocked", "RunLock", "holder"]

LOCK_NAME = ".conure.lock"


class RunLocked(Exception):
    """Another process holds the run directory's lock (the message names it)."""


def holder(run_dir: os.PathLike) -> Optional[Dict[str, Any]]:
    """What the lock file says about its (last) holder: ``{"pid", "host", "started", "command"}``, or None when
    there is no readable record. The record of a dead holder stays until the next writer replaces it: whether the
    lock is held is only known by trying to take it."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8")
        info = json.loads(text)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: Optional[Dict[str, Any]]) -> str:
    if not info:
        # the holder locked the file but has not written its record yet (a race of microseconds), or wrote none
        return "another process (not yet identified)"
    return f"process {info.get('pid', '?')} on {info.get('host', '?')} (started {info.get('started', '?')})"


class RunLock:
    """The lock on one run directory, held until :meth:`release` (or the process ends).

    ``RunLock.acquire(dir)`` creates ``dir`` if needed (the lock file must live somewhere before any check of the
    directory's content, else two writers could both find it empty) and raises :class:`RunLocked` at once, without
    waiting, when another process holds it. Re-acquiring a directory this process already holds through another
    ``RunLock`` is refused as well: flock locks belong to the open file, not the process.
    """

    def __init__(self, path: Path, fd: int, created: Sequence[Path] = ()) -> None:
        self.path = path
        self._fd: Optional[int] = fd
        self.created = list(created)  # directories made for the lock, deepest first: removed if left empty

    @classmethod
    def acquire(cls, run_dir: os.PathLike, error: Type[Exception] = RunLocked) -> RunLock:
        d = Path(run_dir)
        path = d / LOCK_NAME
        created = [p for p in [d, *d.parents] if not p.exists()]
        for _ in range(100):  # retried only when the file was unlinked between our open and our flock
            try:
                d.mkdir(parents=True, exist_ok=True)
                # O_CLOEXEC: a program exec'd by the run does not inherit the lock; no O_TRUNC: the record of a
                # live holder must survive until we know we hold the lock
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                # as ``error`` (a RunError in runner): under torchrun, rank 0 reports it to the other ranks, which
                # would otherwise wait for rank 0's answer forever
                raise error(
                    f"cannot lock {d} for writing: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise error(
                        f"{d} is being written by {_describe(holder(d))}; wait for it to end (or stop "
                        f"it), then rerun; eval/inspect/predict/export can read the run meanwhile"
                    ) from None
                raise error(f"cannot lock {path}: {e.strerror or e}") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # we locked a file its last holder removed: lock the one at the path now
        else:
            raise error(f"cannot lock {path}: it keeps being replaced")
        lock = cls(path, fd, [p for p in created if p.is_dir()])
        try:
            lock._write_record()
        except BaseException:
            lock.release()
            raise
        return lock

    def _write_record(self) -> None:
        import sys

        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        data = (json.dumps(info) + "\n").encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __bool__(self) -> bool:  # ``lock or RunLock.acquire(...)``: a released lock is taken again
        return self.held

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays, unless the directory was made for it and holds nothing else:
        a run that failed before writing anything leaves no trace (as before the lock existed)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.created and [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]:
                self.path.unlink()  # still locked here: a writer that opened it sees the inode change
                for p in self.created:
                    try:
                        p.rmdir()
                    except OSError:  # something else appeared there meanwhile: leave it
                        break
        except OSError:
            pass
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # a Run dropped without execute()'s cleanup must not keep the directory locked
        try:
            self.release()
        except Exception:
            pass
