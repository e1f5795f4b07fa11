"""Writing files that others read: atomically (never half a file or half a folder), durably, and as strict JSON.

One way to write, for every file and folder a reader may open while it is written or after a crash:
build it beside its destination, fsync it, rename it into place, fsync the folder that holds it
(``atomic_write`` for a file, ``staged_dir`` for a folder). A process killed at any moment leaves the
old version or the new one, never a mix; what a kill can leave is a hidden temporary sibling
(``.NAME.*.tmp`` / ``.NAME.exdd-new-*`` / ``.NAME.exdd-old-*``) that no reader opens.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import shutil
import tempfile
import threading
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np


def fsync_dir(path: str) -> None:
    """fsync a folder (so that a rename or a new file inside it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """fsync every file and folder under root (root included), files before the folders that hold them."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)


def atomic_write(path: str, data: Union[str, bytes], fsync: bool = False) -> str:
    """Write data through a temporary file in path's folder and a rename, so a reader sees the old or the new file.

    fsync: durable too (the file fsync'd before the rename, its folder after), for what a restart must find
    intact (bank manifests, model configs, deploy records)."""
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{threading.get_ident()}.tmp")  # open(): the umask's mode
    binary = isinstance(data, bytes)
    try:
        with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where the kernel, libc or filesystem
    lacks it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: no exchange here, fall back
        return False
    raise OSError(err, os.strerror(err), a)


def replace_dir(new: str, dest: str) -> None:
    """Put the folder new at dest (same filesystem), replacing a folder already there, then remove the old one.

    The swap is one atomic exchange where Linux offers it (renameat2 RENAME_EXCHANGE: readers see the old folder
    or the new one, never none); elsewhere the old folder is first renamed aside (a reader may then briefly find
    no dest). Either way a kill leaves dest complete (old or new) and at most a hidden ``.NAME.exdd-old-*`` sibling."""
    new, dest = os.path.abspath(new), os.path.abspath(dest)
    parent, base = os.path.split(dest)
    if not os.path.lexists(dest):
        os.rename(new, dest)
        fsync_dir(parent)
        return
    if _exchange(new, dest):
        old = new  # the exchange left the old folder at new's name
        aside = tempfile.mkdtemp(prefix=f".{base}.exdd-old-", dir=parent)
        os.rename(old, aside)  # under a name that says what it is, before removing it
    else:
        aside = tempfile.mkdtemp(prefix=f".{base}.exdd-old-", dir=parent)
        os.rmdir(aside)
        os.rename(dest, aside)
        os.rename(new, dest)
    fsync_dir(parent)
    shutil.rmtree(aside, ignore_errors=True)


def check_replaceable(dest: str, allowed: Optional[Callable[[str], bool]], what: str) -> None:
    """ValueError naming them when an existing folder dest holds entries that allowed(name) refuses: staged_dir
    replaces dest whole, and must never take a user's other files with it (``--out .``)."""
    if allowed is None or not os.path.isdir(dest):
        return
    other = sorted(n for n in os.listdir(dest) if not allowed(n))
    if other:
        shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        raise ValueError(
            f"{dest}: holds other files than {what} ({shown}); it would be replaced whole: choose a new or empty folder"
        )


@contextlib.contextmanager
def staged_dir(dest: str, allowed: Optional[Callable[[str], bool]] = None, what: str = "") -> Iterator[str]:
    """A new empty folder beside dest to write into; when the block ends without an exception it is fsync'd and
    put at dest (replace_dir: an existing dest is replaced whole, only then removed), otherwise removed. dest never
    holds a half-written result. allowed: the names an existing dest may hold (check_replaceable), checked first."""
    dest = os.path.abspath(dest)
    check_replaceable(dest, allowed, what)
    parent, base = os.path.split(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.exdd-new-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 -> the mode a plain mkdir would give
        fsync_tree(tmp)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def json_safe(obj: Any) -> Any:
    """obj with NaN/inf as None and numpy scalars/arrays as plain Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
