"""`exdd offline build --ray`: the bank build spread over a Ray cluster, giving the same banks.

- Features: the images are cut into shards (whole batches, in input order) that extractor actors
  (one per CPU, or per GPU where the cluster has GPUs) turn into patch rows. The rows stay in
  the cluster's object store, on the node that made them; the driver holds references only.
- Coreset: the chunked greedy k-center of ``offline/coreset.py`` with the same chunks, budgets
  and start rows (each chunk's ``start_row``, found by the worker), each chunk's greedy run as a task on a
  worker (which maps only the shards its chunk overlaps); the driver merges the picks by pick distance exactly
  as ``chunked_kcenter`` does and fetches only the picked rows. Same images and chunking: same banks.
- Positive bank: the workers keep only the defect patches of their shards; calibration: the
  workers score their held-out shards with the new banks and send back scores only.

Worker memory is bounded by one shard of images and one chunk of rows (``chunk_rows`` x d x 4 B),
whatever the dataset size. Bit-identical to the single-process build run with the same torch
thread count (torch's CPU kernels round the last bit differently with it): the extractor actors
use the thread count a single-process build on the driver's machine uses (``threads`` to change),
and shards are whole scoring batches (multiples of 16 images and of the extraction batch).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from exdd.datasets import Sample
from exdd.log import get as _logger
from exdd_scoring import BankPair

from .build import (
    BuildConfig,
    BuildResult,
    bank_of,
    build_crossfit,
    calibration_scorer,
    defect_patches,
    finish,
    plan,
    score_samples,
)
from .coreset import Coreset, bank_size, greedy_kcenter, greedy_picks, merge_chunks

SCORE_BATCH = 16  # score_samples' batch: shards are multiples of it
log = _logger(__name__)


@dataclass
class Part:
    """One shard's rows in the object store: (rows, d) float16, and what the shard held."""

    rows: int
    ref: Any
    kept: int
    errors: List[Tuple[str, str]]


# ---------------------------------------------------------------- workers


class Extractor:
    """A Ray actor holding the feature extractor (built from the same spec as the driver's)."""

    def __init__(
        self,
        weights: str,
        d: int,
        projection_seed: int,
        input_hw: Tuple[int, int],
        batch_size: int,
        threads: int,
        expected: Dict[str, Any],
        projection: Optional[np.ndarray] = None,
    ):
        import torch

        from exdd_scoring.spec import RANDOM_PROJECTION

        from .features import build_extractor

        torch.set_num_threads(max(1, threads))
        model, info = build_extractor(
            weights,
            d,
            projection_seed,
            (input_hw[0], input_hw[1]),
            projection,
            expected.get("projection", RANDOM_PROJECTION),
        )  # a fitted one: the driver's
        for key in ("weights", "projection_sha256", "input_size", "d"):
            if key in expected and info.get(key) != expected[key]:
                raise RuntimeError(
                    f"worker's extractor differs from the driver's in {key}: {info.get(key)!r} != "
                    f"{expected[key]!r} (are the weights at the same path on every node?)"
                )
        self.device = "cpu"
        import ray

        self.model: Any = model
        if ray.get_gpu_ids():
            self.device = "cuda"
            self.model = _OnDevice(model.to("cuda"), "cuda")
        self.info = info
        self.size_hw, self.grid, self.d = tuple(info["input_size"]), tuple(info["grid"]), int(info["d"])
        self.batch_size = batch_size

    def _extract(self, samples: Sequence[Sample], with_mask: bool):
        from .extract import extract

        return extract(samples, self.model, self.size_hw, self.grid, self.d, self.batch_size, with_mask=with_mask)

    def normal_rows(self, samples: Sequence[Sample]):
        """(meta, (n x h x w, d) float16 rows) of a shard of normal images."""
        ex = self._extract(samples, False)
        rows = ex.features.reshape(-1, self.d)
        return {"kept": len(ex.samples), "errors": ex.errors, "rows": int(rows.shape[0])}, rows

    def defect_rows(self, samples: Sequence[Sample], min_cover: float):
        """(meta, defect-patch rows) of a shard of defective images (the build's defect-patch rule)."""
        ex = self._extract(samples, True)
        rows = ex.features[defect_patches(ex.covers, min_cover)]
        return {"kept": len(ex.samples), "errors": ex.errors, "rows": int(rows.shape[0])}, rows

    def defect_maps(self, samples: Sequence[Sample], min_cover: float):
        """(meta, (features (n, h, w, d) float16, defect-patch mask (n, h, w))) of a shard of defective images: what
        the image head's cross-fit scores (offline/head.py)."""
        ex = self._extract(samples, True)
        return (
            {"kept": len(ex.samples), "errors": ex.errors, "rows": int(ex.features.shape[0])},
            (ex.features, defect_patches(ex.covers, min_cover)),
        )

    def heldout_rows(self, samples: Sequence[Sample]):
        """(meta with labels and errors, (n, h, w, d) float16 features) of a shard of held-out images."""
        ex = self._extract(samples, True)
        return {
            "kept": len(ex.samples),
            "errors": ex.errors,
            "rows": int(ex.features.shape[0]),
            "labels": np.array([s.label for s in ex.samples]),
        }, ex.features


class _OnDevice:
    """The extractor on a GPU, taking and returning CPU tensors (as ``run_extractor`` expects)."""

    def __init__(self, model, device: str):
        self.model, self.device = model, device

    def __call__(self, images):
        return self.model(images.to(self.device)).float().cpu()


def _rows(a: int, b: int, offsets: Sequence[int], *parts: np.ndarray) -> np.ndarray:
    """Rows a:b (float32, contiguous) of the concatenation of parts, the first of which starts at offsets[0]."""
    out = []
    for off, p in zip(offsets, parts):
        lo, hi = max(a, off) - off, min(b, off + p.shape[0]) - off
        if hi > lo:
            out.append(np.asarray(p[lo:hi], dtype=np.float32))
    return np.ascontiguousarray(np.concatenate(out))


def _chunk_greedy(a: int, b: int, budget: int, offsets: Sequence[int], *parts: np.ndarray):
    """One chunk's greedy picks (chunk-local indices) and pick values, as chunked_kcenter computes them."""
    return greedy_picks(_rows(a, b, offsets, *parts), budget)


def _exact(k: int, n: int, offsets: Sequence[int], *parts: np.ndarray) -> Coreset:
    """Exact greedy over all rows (only used when they fit one chunk)."""
    return greedy_kcenter(_rows(0, n, offsets, *parts), k)


def _driver_threads() -> int:
    """The torch thread count of a single-process build here (CPU kernels round differently with it)."""
    import os

    return max(1, os.cpu_count() or 1)


def _score_part(pair: BankPair, feats: np.ndarray, labels: np.ndarray) -> Dict[str, np.ndarray]:
    """score_samples of one held-out shard's features (whole batches of SCORE_BATCH, as single-process), with the
    normal images' map pixels the pixel threshold is calibrated on."""
    return score_samples(calibration_scorer(pair), feats, SCORE_BATCH, pixel_images=np.asarray(labels) == 0)


def _take(part: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.asarray(part[idx])


# ---------------------------------------------------------------- driver


class RayBuild:
    """The distributed stages of a build on a joined Ray cluster."""

    def __init__(
        self,
        ray,
        weights: str,
        features: Dict[str, Any],
        cfg: BuildConfig,
        workers: Optional[int] = None,
        shard_images: int = 64,
        threads: Optional[int] = None,
        projection: Optional[np.ndarray] = None,
    ):
        from exdd.ray_cluster import cluster_cpus

        self.ray, self.cfg = ray, cfg
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = workers or (gpus or cluster_cpus(ray))
        unit = SCORE_BATCH * cfg.batch_size // math.gcd(SCORE_BATCH, cfg.batch_size)
        self.shard = unit * max(1, math.ceil(shard_images / unit))
        # one actor per CPU (or GPU) while a feature stage runs; stopped after it, so that the coreset
        # tasks get the CPUs (the rows they made stay in the object store)
        self.actor = ray.remote(num_cpus=0 if gpus else 1, num_gpus=1 if gpus else 0)(Extractor)
        self.spec = (
            weights,
            int(features["d"]),
            int(features["projection_seed"]),
            tuple(features["input_size"]),
            cfg.batch_size,
            threads or _driver_threads(),
            features,
            projection,
        )
        self.task_chunk = ray.remote(num_cpus=1)(_chunk_greedy)
        self.task_exact = ray.remote(num_cpus=1)(_exact)
        self.task_take = ray.remote(num_cpus=1)(_take)
        self.task_score = ray.remote(num_cpus=1)(_score_part)
        self.workers = n

    def _shards(self, samples: Sequence[Sample]) -> List[List[Sample]]:
        return [list(samples[i : i + self.shard]) for i in range(0, len(samples), self.shard)]

    def _map(self, method: str, samples: Sequence[Sample], args: tuple, num_returns: int, progress) -> List[Any]:
        """Call an extractor method on every shard (actors round-robin); result refs in shard order."""
        shards = self._shards(samples)
        actors = [self.actor.remote(*self.spec) for _ in range(min(self.workers, len(shards)))]
        try:
            calls = []
            for i, sh in enumerate(shards):
                m = getattr(actors[i % len(actors)], method)
                calls.append(m.options(num_returns=num_returns).remote(sh, *args))
            heads = [c[0] if num_returns > 1 else c for c in calls]
            pending = {h: len(sh) for h, sh in zip(heads, shards)}
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                for h in done:
                    self.ray.get(h)  # a failed shard raises here, naming the worker's error
                    if progress:
                        progress(pending[h])
                    pending.pop(h)
        finally:
            for a in actors:
                self.ray.kill(a)
        return calls

    def _parts(self, method: str, samples, args, progress) -> List[Part]:
        calls = self._map(method, samples, args, 2, progress)
        metas = self.ray.get([c[0] for c in calls])
        return [Part(m["rows"], c[1], m["kept"], m["errors"]) for c, m in zip(calls, metas)]

    def kcenter(self, parts: Sequence[Part], k: int, progress=None) -> Coreset:
        """chunked_kcenter over the parts' rows, chunk greedy on the workers, merged here identically."""
        cfg = self.cfg
        chunk_rows, oversample = cfg.chunk_rows, cfg.oversample
        n = sum(p.rows for p in parts)
        offsets = np.concatenate([[0], np.cumsum([p.rows for p in parts])]).astype(np.int64)

        def over(a: int, b: int):
            ids = [i for i, p in enumerate(parts) if offsets[i] < b and offsets[i] + p.rows > a]
            return [int(offsets[i]) for i in ids], [parts[i].ref for i in ids]

        if n <= chunk_rows or k >= n:
            if k >= n:
                return Coreset(np.arange(n, dtype=np.int64), 0.0, False, "all")
            offs, refs = over(0, n)
            cs = self.ray.get(self.task_exact.remote(k, n, offs, *refs))
            if progress:
                progress(n)
            return cs
        n_chunks = math.ceil(n / chunk_rows)
        bounds = np.linspace(0, n, n_chunks + 1).round().astype(np.int64)
        calls = []
        for c in range(n_chunks):
            a, b = int(bounds[c]), int(bounds[c + 1])
            budget = max(1, math.ceil(oversample * k * (b - a) / n))
            offs, refs = over(a, b)
            calls.append(self.task_chunk.remote(a, b, budget, offs, *refs))
        left = {r: int(bounds[c + 1] - bounds[c]) for c, r in enumerate(calls)}
        while left:
            done, _ = self.ray.wait(list(left), num_returns=1)
            for r in done:
                if progress:
                    progress(left[r])
                left.pop(r)
        results = self.ray.get(calls)
        picks = [sel + int(bounds[c]) for c, (sel, _) in enumerate(results)]
        radii = [vals for _, vals in results]
        return merge_chunks(picks, radii, k, f"chunked(rows={chunk_rows},oversample={oversample})")

    def gather(self, parts: Sequence[Part], indices: np.ndarray) -> np.ndarray:
        """The rows at the given (sorted) global indices, fetched from the parts holding them."""
        offsets = np.concatenate([[0], np.cumsum([p.rows for p in parts])]).astype(np.int64)
        refs = []
        for i, p in enumerate(parts):
            local = indices[(indices >= offsets[i]) & (indices < offsets[i + 1])] - offsets[i]
            if local.size:
                refs.append(self.task_take.remote(p.ref, local))
        return np.concatenate(self.ray.get(refs))

    def bank(self, parts: Sequence[Part], ratio: float, progress=None):
        """make_bank over distributed rows: (bank, stats)."""
        n = sum(p.rows for p in parts)
        cs = self.kcenter(parts, bank_size(n, ratio, self.cfg.min_size), progress)
        return bank_of(self.gather(parts, np.sort(cs.indices)), n, cs, ratio, self.cfg.min_size, self.cfg.k)


def build_ray(
    ray,
    dataset: str,
    out_dir: str,
    weights: str,
    features: Dict[str, Any],
    cfg: BuildConfig,
    synthetic_dirs: Sequence[str] = (),
    layout: str = "auto",
    progress_factory: Optional[Callable[[str, int], Any]] = None,
    workers: Optional[int] = None,
    shard_images: int = 64,
    threads: Optional[int] = None,
    projection: Optional[np.ndarray] = None,
) -> BuildResult:
    """build() on a Ray cluster: same plan, same banks, same manifest (but its timestamp).

    projection: a fitted projection (fitted on the driver before, ``offline/projection.py``), sent to every
    extractor actor and saved with the banks; None for the random one each actor makes from its seed."""

    def bar(desc: str, total: int):
        return progress_factory(desc, total) if progress_factory else None

    def stage(desc: str, total: int, fn):
        b = bar(desc, total)
        out = fn(b.update if b else None)
        if b:
            b.close()
        return out

    p = plan(dataset, cfg, synthetic_dirs, layout)
    rb = RayBuild(ray, weights, features, cfg, workers, shard_images, threads, projection)
    errors: List[Tuple[str, str]] = []

    def note(parts: Sequence[Part]) -> None:
        for part in parts:
            for path, e in part.errors:
                log.error("%s (skipped)", e)
            errors.extend(part.errors)

    neg_parts = stage("features: normal", len(p.normals), lambda u: rb._parts("normal_rows", p.normals, (), u))
    note(neg_parts)
    if sum(x.kept for x in neg_parts) == 0:
        raise ValueError(f"{dataset}: none of the normal training images could be read")
    neg_rows = sum(x.rows for x in neg_parts)
    negative, neg_stats = stage("coreset: negative", neg_rows, lambda u: rb.bank(neg_parts, cfg.neg_ratio, u))

    pos_parts: List[Part] = []
    pos_counts: Dict[str, int] = {}
    n_synth_parts = 0
    for name, samples in {"real": p.defects, "synthetic": p.synth}.items():
        pos_counts[name] = 0
        if not samples:
            continue
        parts = stage(
            f"features: {name} defects", len(samples), lambda u: rb._parts("defect_rows", samples, (cfg.min_cover,), u)
        )
        note(parts)
        pos_parts += parts
        pos_counts[name] = sum(x.kept for x in parts)
        n_synth_parts = len(parts) if name == "synthetic" else 0
    positive, pos_stats = None, {"patches": 0, "size": 0}
    if sum(x.rows for x in pos_parts) > 0:
        positive, pos_stats = rb.bank([x for x in pos_parts if x.rows], cfg.pos_ratio)
    else:
        print("warning: no defect patches for the positive bank: exdd modes fall back to patchcore", file=sys.stderr)

    held: List[Part] = []
    held_labels: List[np.ndarray] = []

    def held_scores(pair: BankPair):
        """Held-out features extracted once into the object store, scored there with each pair given."""
        if not p.held:
            return None
        if not held:
            calls = stage("features: held-out", len(p.held), lambda u: rb._map("heldout_rows", p.held, (), 2, u))
            metas = ray.get([c[0] for c in calls])
            held.extend(Part(m["rows"], c[1], m["kept"], m["errors"]) for c, m in zip(calls, metas))
            held_labels.extend(m["labels"] for m in metas)
            note(held)
        pref = ray.put(pair)
        res = ray.get([rb.task_score.remote(pref, h.ref, lab) for h, lab in zip(held, held_labels) if h.rows])
        if not res:  # no readable held-out image: what score_samples gives for none
            return score_samples(calibration_scorer(pair), np.zeros((0, 1, 1, 1), np.float16)), np.zeros(0, int)
        scores = {}
        for key in res[0]:
            parts = [r[key] for r in res if len(r[key])]
            scores[key] = np.concatenate(parts) if parts else np.zeros(0)
        return scores, np.concatenate(held_labels) if held_labels else np.zeros(0, dtype=int)

    def head_crossfit(manifest):
        """The image head's cross-fitted inputs, as build() computes them (the real defects' full feature maps,
        extracted again on the workers; the fold banks built here with build's make_bank)."""
        if positive is None or not p.defects:
            return None
        got = [ray.get(part.ref) for part in rb._parts("defect_maps", p.defects, (cfg.min_cover,), None) if part.rows]
        if not got:
            return None
        synth = None
        if p.synth:
            synth = np.concatenate(
                [ray.get(x.ref) for x in pos_parts[len(pos_parts) - n_synth_parts :] if x.rows]
                or [np.zeros((0, int(features["d"])), np.float16)]
            )
        return build_crossfit(
            negative, manifest, np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got]), synth, cfg
        )

    return finish(
        dataset,
        out_dir,
        features,
        cfg,
        synthetic_dirs,
        p,
        (negative, neg_stats),
        (positive, pos_stats),
        pos_counts,
        errors,
        held_scores,
        projection,
        head_crossfit,
    )
