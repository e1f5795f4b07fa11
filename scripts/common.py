"""What several scripts do alike: dataset subsets, peak RSS, raw-feature caches, `exdd` in a subprocess, and the
studies' evidence helpers (served_evidence: the served formulas on a study's one-pass evidence; peak_dists).

The bench harness (result record, latency statistics, serving chain, local server) is scripts/harness.py.

Scripts run as modules from the repository root (``python -m scripts.benchmarks.bench_coreset ...``), so that
they import this module as ``scripts.common``; it imports only exdd's public API, and that lazily.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXDD = [sys.executable, "-m", "exdd.cli"]
# the studies' datasets, by folder name (study_cache / study_splits NAME:HxW): the dev sets in ../shared/data, or
# any folder of KSDD2-layout sets named by EXDD_STUDY_DATA (e.g. sets kept back from development, rule 4)
STUDY_DATA = os.environ.get("EXDD_STUDY_DATA") or os.path.join(os.path.dirname(ROOT), "shared", "data")


# ----------------------------------------------------------------------------- memory


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GiB (ru_maxrss is kB on Linux): the figure the benchmarks report."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def save_json(path: str, obj: Any, indent: Optional[int] = 1) -> str:
    """Write a script's JSON record atomically (folders made), so a run read mid-way never shows half a file."""
    from exdd.fileio import atomic_write

    return atomic_write(path, json.dumps(obj, indent=indent))


# ----------------------------------------------------------------------------- dataset subsets


def mask_of(image: str) -> Optional[str]:
    """The KSDD2-layout mask next to an image (NAME_GT.png), or None when there is none."""
    gt = image[: -len(".png")] + "_GT.png"
    return gt if os.path.exists(gt) else None


def link_subset(split_dir: str, images: Iterable[Tuple[str, Optional[str]]], numbered: bool = False) -> str:
    """Symlink (image, mask or None) pairs into a fresh split folder; numbered names keep files of two folders apart."""
    os.makedirs(split_dir)
    for i, (image, mask) in enumerate(images):
        stem = f"{i:05d}" if numbered else os.path.basename(image)[: -len(".png")]
        os.symlink(os.path.abspath(image), os.path.join(split_dir, stem + ".png"))
        if mask:
            os.symlink(os.path.abspath(mask), os.path.join(split_dir, stem + "_GT.png"))
    return split_dir


# ----------------------------------------------------------------------------- raw-feature caches


def cache_folder(cache_root: str, dataset: str, input_hw: Sequence[int], split: str) -> str:
    """<cache_root>/<dataset name>-HxW/<split>: where every script keeps (and looks for) a dataset's raw features."""
    name = os.path.basename(os.path.normpath(dataset))
    return os.path.join(cache_root, f"{name}-{input_hw[0]}x{input_hw[1]}", split)


def raw_caches(
    dataset: str,
    weights: str,
    input_hw: Tuple[int, int],
    cache_root: str,
    splits: Sequence[str] = ("train", "test"),
    progress: bool = True,
) -> Dict[str, object]:
    """The raw-feature cache of each split (extracted once, then reused), so every d is one projection away."""
    from exdd.datasets import load_split
    from exdd.offline.feature_cache import extract_raw
    from exdd.progress import bar

    out = {}
    for split in splits:
        samples = load_split(dataset, split)
        b = bar(f"raw features: {split}", len(samples), "img") if progress else None
        out[split] = extract_raw(
            samples,
            weights,
            input_hw,
            cache_folder(cache_root, dataset, input_hw, split),
            progress=b.update if b else None,
        )
        if b:
            b.close()
    return out


def normal_rows(folder: str, d: int, images: int) -> np.ndarray:
    """Projected (seed 0) patch features of the first `images` defect-free images of a raw-feature cache, one row
    each."""
    from exdd.offline.feature_cache import RawCache
    from exdd.offline.features import make_projection

    c = RawCache(folder)
    normal = [i for i in range(len(c.paths)) if c.covers[i].max() == 0][:images]
    return c.project(normal, make_projection(d, 0)).reshape(-1, d)


# ----------------------------------------------------------------------------- processes


def exdd(*args: str, log: Optional[Callable[[str], None]] = None, ok: Sequence[int] = (0,)) -> float:
    """Run the real `exdd` command line; wall seconds. Raises with its stderr when its exit code is not in ok."""
    t = time.perf_counter()
    p = subprocess.run(EXDD + list(args), capture_output=True, text=True)
    secs = time.perf_counter() - t
    if log:
        log(f"$ exdd {' '.join(args)}  ({secs:.1f}s, exit {p.returncode})")
        for line in p.stdout.strip().splitlines()[-3:]:
            log("    " + line)
    if p.returncode not in ok:
        raise RuntimeError(f"exdd {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return secs


def process_tree(pid: int) -> List[int]:
    """pid and all its descendants, from the parent pid of every process in /proc (whichever thread spawned them)."""
    children: Dict[int, List[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def peak_dists(feats: np.ndarray, idx: np.ndarray, bank: np.ndarray, nbr: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """(b, 1 + nbr.shape[1]) float32 distances from each image's peak patch (feats (b, P, d), peak (b,) its index) to
    its bank match m* (idx (b, P)) and m*'s bank neighbours (nbr), m* first. The served bank_peak reads only k - 1
    neighbours; the studies keep m* and 9 so that other k and anomalib's keep-self reweighting can be tried."""
    b = np.arange(feats.shape[0])
    m = idx[b, peak]
    cand = np.concatenate([m[:, None], nbr[m]], axis=1)
    diff = feats[b, peak][:, None, :] - bank[cand]
    return np.sqrt(np.einsum("nkd,nkd->nk", diff, diff)).astype(np.float32)


def reweighted(s_star: np.ndarray, nb: np.ndarray, k: int, keep_self: bool, t: float) -> np.ndarray:
    """PatchCore's reweighted score (1 - q) s* (exdd_scoring's reweight_q) over m* and its neighbours (keep_self,
    anomalib) or the neighbours only (ours); nb: peak_dists, m* first. The served s- is k = defaults.K, the neighbours
    only, t = sqrt(d) (served_evidence); the studies also try anomalib's k = 9 and t = 1."""
    from exdd_scoring import reweight_q

    return (1.0 - reweight_q(s_star, nb[:, :k] if keep_self else nb[:, 1:k], t, np)) * s_star


STUDY_EPS = 1e-6  # the studies' eps, the Scorer's default


def served_evidence(e: Any, pos_scale: Optional[float], params: Dict, rows: Optional[np.ndarray] = None):
    """The served scorer's Evidence (exdd_scoring.scores) of a study's one-pass evidence e (a_neg, a_pos: (n, P)
    nearest distances; nb_neg, nb_pos: (n, >= K) distances from each peak patch to its bank match and that match's
    neighbours; d, grid, s_h, s_w), of its rows, so the served modes' own formulas score it: the peaks' reweighting
    with k = defaults.K, the positive bank's spacing pos_scale (None: no bounded eps), the maps smoothed as the
    scorer smooths them (smooth_maps)."""
    from exdd import defaults
    from exdd_scoring import reweight_q
    from exdd_scoring.scores import DEFAULT_GAMMA, Evidence

    sub = (lambda v: v) if rows is None else (lambda v: v[rows])
    an, ap, nbn, nbp = sub(e.a_neg), sub(e.a_pos), sub(e.nb_neg), sub(e.nb_pos)
    t = e.d**0.5
    peak = lambda a, nb: {"s_star": a.max(1), "q": reweight_q(a.max(1), nb[:, 1 : defaults.K], t, np)}  # noqa: E731
    full = {"gamma": DEFAULT_GAMMA, **params}  # params may set another gamma (a study's variant of the dual map)
    if pos_scale is not None:
        full["pos_scale"] = pos_scale
    return Evidence(
        an,
        ap,
        peak(an, nbn),
        peak(ap, nbp),
        tuple(e.grid),
        STUDY_EPS,
        np,
        lambda m: smooth_maps(np.asarray(m), e.s_h, e.s_w),
        full,
    )


def smooth_maps(patches: np.ndarray, s_h: np.ndarray, s_w: np.ndarray, chunk: int = 32) -> np.ndarray:
    """(n, h, w) patch maps upsampled and smoothed (exdd_scoring.upsample_smooth) chunk images at a time (bounded
    memory)."""
    from exdd_scoring import upsample_smooth

    p = patches.astype(np.float32)
    out = np.empty((p.shape[0], s_h.shape[0], s_w.shape[0]), np.float32)
    for i in range(0, p.shape[0], chunk):
        out[i : i + chunk] = upsample_smooth(p[i : i + chunk], s_h, s_w, np)
    return out
