"""Library messages go through Python ``logging`` (logger ``exdd.*``); the ``exdd`` command shows them on
stderr as ``warning: ...`` / ``error: ...`` lines, the same plain form as its own messages."""

from __future__ import annotations

import logging
import sys


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message is logged (so a redirected or captured
    stderr gets the messages too), not to the stream of the moment it was made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def get(name: str) -> logging.Logger:
    """The logger of a library module (pass __name__)."""
    return logging.getLogger(name if name.startswith("exdd") else f"exdd.{name}")


def configure(level: int = logging.INFO) -> None:
    """Send exdd's library messages to stderr as plain lines (once; called by the `exdd` command)."""
    root = logging.getLogger("exdd")
    if any(getattr(h, "_exdd", False) for h in root.handlers):
        return
    h = _StderrHandler()
    h.setFormatter(_PlainFormatter())
    h._exdd = True  # type: ignore[attr-defined]
    root.addHandler(h)
    root.setLevel(level)
    root.propagate = False
