"""Expanding command-line PATH arguments (files, folders, globs) into a stable list of files."""

from __future__ import annotations

import fnmatch
import glob
import os
from typing import Iterable, List, Sequence

from exdd.images import walk_files


def expand(args: Iterable[str], all_files: bool = False, exclude: Sequence[str] = ()) -> List[str]:
    """Files named by args in a stable order: folders recursively (sorted), globs sorted, no duplicates.

    In folders only image-named files are taken unless all_files; a file named directly is always
    taken (a non-image named directly becomes an error row, not a silent skip). Files whose name
    matches an exclude pattern (e.g. ``*_GT.png``) are left out everywhere.
    """
    out: List[str] = []
    seen = set()

    def add(p: str) -> None:
        p = os.path.normpath(p)
        if any(fnmatch.fnmatch(os.path.basename(p), pat) for pat in exclude):
            return
        if p not in seen:
            seen.add(p)
            out.append(p)

    for a in args:
        if os.path.isdir(a):
            for p in walk_files(a, all_files):
                add(p)
        elif any(c in a for c in "*?["):
            for p in sorted(glob.glob(a, recursive=True)):
                if os.path.isfile(p):
                    add(p)
        else:
            add(a)  # missing files become error rows
    return out
