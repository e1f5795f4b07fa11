"""The one progress helper of the CLI: a tqdm bar on a terminal; when output is piped, nothing or (every=N)
a plain line at most every N seconds, so output stays scriptable."""

from __future__ import annotations

import sys
import time
from typing import Optional


class Progress:
    """Counts work done out of total; update(n) and close() (also a context manager)."""

    def __init__(self, desc: str, total: int, unit: str = "it", initial: int = 0, every: Optional[float] = None):
        self.desc, self.total, self.unit, self.every = desc, int(total), unit, every
        self.n = self.printed = int(initial)
        self.made = 0
        self.t0 = self.last = time.time()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, smoothing=0.1
            )

    def _line(self) -> None:
        now = time.time()
        rate = self.made / max(now - self.t0, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        print(
            f"{self.desc}: {self.n}/{self.total} {self.unit}s, {rate:.3g} {self.unit}s/s, eta {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        self.last, self.printed = now, self.n

    def update(self, n: int = 1) -> None:
        """n more units done."""
        self.n += n
        self.made += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.every is not None and (time.time() - self.last >= self.every or self.n >= self.total):
            self._line()

    def close(self) -> None:
        """Close the bar, or print the last plain line if one is due."""
        if self.bar is not None:
            self.bar.close()
        elif self.every is not None and self.printed != self.n:
            self._line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(desc: str, total: int, unit: str = "it", initial: int = 0, every: Optional[float] = None) -> Progress:
    """A Progress (tqdm on a terminal; silent, or a line every `every` s, when piped)."""
    return Progress(desc, total, unit, initial, every)
