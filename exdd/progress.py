"""Progress bars on a terminal, nothing when output is piped (plain, scriptable output)."""
from __future__ import annotations

import sys

from tqdm import tqdm


def bar(desc: str, total: int, unit: str = "it"):
    """A tqdm bar on stderr, disabled when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(),
                dynamic_ncols=True, smoothing=0.1)
