"""One writer per result file: ``OUT.lock`` beside it, held with an exclusive flock for the whole job, the holder's
pid written in it.

A second job on the same --out finds the lock held and refuses, naming the file and the holder's pid. A lock file
left by a job that was killed (SIGKILL, a crash, a power cut) is not held by anyone: the kernel releases a flock
when the last descriptor of its holder closes, which happens when the process ends, so a lock that can be taken
proves its previous holder is gone. It is then taken over and reported (with the pid it names). Needs a filesystem
whose locks work (local disks; NFS since Linux 2.6.12); where flock fails for any other reason the job refuses with
the lock file and the reason.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Optional


class OutputLocked(RuntimeError):
    """Another job writes the result file (or it cannot be locked); the message names the file and the pid."""


def _holder(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None


class OutputLock:
    """The exclusive lock of out_path (OUT.lock); stale_pid names a dead holder whose lock file was taken over."""

    def __init__(self, out_path: str):
        self.out = out_path
        self.path = out_path + ".lock"
        self.stale_pid: Optional[int] = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = _holder(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputLocked(
                        f"{out_path}: another job is writing it (pid {pid if pid else 'unknown'}, lock file "
                        f"{self.path}); wait for it to end or stop it, then rerun "
                        f"(one writer per result file)"
                    ) from None
                raise OutputLocked(
                    f"{out_path}: cannot lock {self.path} ({e.strerror}); this filesystem's locks do "
                    "not work: write the results on a local disk"
                ) from None
            try:  # a holder releasing between our open and flock unlinks the file: lock the file at the path
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        pid = _holder(fd)
        if pid is not None and pid != os.getpid():
            self.stale_pid = pid
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd: Optional[int] = fd

    def stale_note(self) -> Optional[str]:
        """What to tell the user when a dead job's lock file was taken over, else None."""
        if self.stale_pid is None:
            return None
        return (
            f"{self.path}: left by pid {self.stale_pid}, which is no longer running (the kernel released its "
            "lock when it ended: killed or crashed); taken over"
        )

    def release(self) -> None:
        """Remove the lock file (while still holding it) and release the lock."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __del__(self):
        try:
            self.release()
        except Exception:  # at interpreter exit
            pass
