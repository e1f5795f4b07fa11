"""One writer per model repository: the deploy lock, and the leftovers a killed writer can leave.

``exdd deploy`` holds ``REPO/.exdd-deploy.lock`` (created exclusively; JSON with the holder's pid, host, start
time and, once known, the scorer version it adds) from its first write to its last, so two deploys to one
repository never interleave (one's rollback could otherwise restore the other's old config). A second deploy is
refused, naming the holder. A lock whose holder is dead (a deploy killed by SIGKILL, a power cut) is never taken
over silently: the refusal says so and how to clear it.

A deploy stages its new version in ``REPO/<scorer>/.exdd-deploy-*``: Triton ignores version folders that are not
numbers, so a leftover there is harmless; older exdd staged in ``REPO/.exdd-deploy-*``, which Triton takes for a
model. ``exdd serve`` removes both kinds at start unless a live deploy holds the lock.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import os
import shutil
import socket
from typing import Any, Dict, Iterator, List, Optional

from exdd.fileio import atomic_write, fsync_dir

LOCK_NAME = ".exdd-deploy.lock"
STAGE_PREFIX = ".exdd-deploy-"


class RepositoryLocked(RuntimeError):
    """Another deploy holds the repository, or a dead one left its lock; the message says which and what to do."""


def lock_path(repo: str) -> str:
    return os.path.join(os.path.abspath(repo), LOCK_NAME)


def holder(repo: str) -> Optional[Dict[str, Any]]:
    """The lock's record (None when the repository is not locked; {'unreadable': text} when it is garbled)."""
    try:
        with open(lock_path(repo)) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(text)
        return rec if isinstance(rec, dict) else {"unreadable": text[:200]}
    except ValueError:
        return {"unreadable": text[:200]}


def alive(rec: Dict[str, Any]) -> Optional[bool]:
    """Whether the lock's holder still runs: True/False on this host, None when that cannot be told (another host,
    an unreadable lock)."""
    pid = rec.get("pid")
    if not isinstance(pid, int) or rec.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def problem(repo: str, rec: Dict[str, Any]) -> str:
    """Why the repository cannot be written now, and what to do."""
    path = lock_path(repo)
    what = rec.get("doing") or "a deploy"
    who = f"pid {rec.get('pid')} on {rec.get('host')}, started {rec.get('started')}"
    state = alive(rec)
    if state is True:
        return f"{repo}: another deploy is running ({who}: {what}); wait for it to end and run again"
    if "unreadable" in rec:
        return (
            f"{path}: an unreadable deploy lock ({rec['unreadable']!r}); if no deploy is running, remove it: rm {path}"
        )
    if state is False:
        return (
            f"{path}: left by a deploy that is no longer running ({who}: {what}), killed before it finished. "
            "Its staged files are hidden (.exdd-deploy-*, ignored by Triton, removed by the next `exdd serve`); a "
            "version it had already renamed into place is complete and will serve from the next load or restart "
            "(its deploy.json names the banks and the threshold it was deployed with; the scorer's config.pbtxt "
            "may still hold the previous threshold). Remove that version or redeploy, then remove the lock: "
            f"rm {path}"
        )
    return (
        f"{path}: held by a deploy on another host ({who}: {what}); if none runs there any more, remove it: rm {path}"
    )


@contextlib.contextmanager
def repository_lock(repo: str, command: str = "exdd deploy") -> Iterator["Lock"]:
    """Hold the repository's deploy lock for the block; RepositoryLocked (naming the holder) when it is taken."""
    path = lock_path(repo)
    rec = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise RepositoryLocked(problem(repo, holder(repo) or {})) from None
    with os.fdopen(fd, "w") as f:
        json.dump(rec, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(os.path.dirname(path))
    lock = Lock(path, rec)
    try:
        yield lock
    finally:
        try:
            os.remove(path)
            fsync_dir(os.path.dirname(path))
        except FileNotFoundError:
            pass


class Lock:
    """A held deploy lock; note() records what the holder is doing (shown if it dies holding the lock)."""

    def __init__(self, path: str, rec: Dict[str, Any]):
        self.path, self.rec = path, rec

    def note(self, doing: str) -> None:
        self.rec["doing"] = doing
        atomic_write(self.path, json.dumps(self.rec), fsync=True)


def leftovers(repo: str) -> List[str]:
    """Staging folders of deploys that did not finish: REPO/.exdd-deploy-* and REPO/<model>/.exdd-deploy-*."""
    repo = os.path.abspath(repo)
    found = glob.glob(os.path.join(glob.escape(repo), STAGE_PREFIX + "*")) + glob.glob(
        os.path.join(glob.escape(repo), "*", STAGE_PREFIX + "*")
    )
    return sorted(p for p in found if os.path.isdir(p) and not os.path.islink(p))


def clean_leftovers(repo: str) -> List[str]:
    """Remove leftovers(repo) unless a live deploy holds the lock (its staging folder is in use); the paths removed."""
    rec = holder(repo)
    if rec is not None and alive(rec) is not False:
        return []
    gone = leftovers(repo)
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone
