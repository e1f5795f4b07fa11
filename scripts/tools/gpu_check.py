"""One-shot GPU check (called by scripts/gpu_check.sh): CuPy scorer vs NumPy, GPU extraction and scoring frames/s.

On a GPU machine (torch CUDA + CuPy):
  1. banks: --banks DIR, else built from real patch features of --data (a bank of --bank-size random
     patches of the normal training images, tiled with 5 % jitter when there are too few, and a
     positive bank of --pos-size patches of the defective ones), neighbours on the GPU;
  2. parity: the CuPy Scorer against the NumPy Scorer on real test-image features (scores and maps, 1e-4);
  3. extraction frames/s (torch, fp16 + channels_last) at each batch of --batches;
  4. CuPy scoring frames/s at each batch (features already on the GPU);
  5. end to end (uint8 images on the host -> GPU extraction -> DLPack -> CuPy scoring -> scores and maps
     back on the host) frames/s at each batch;
  6. Triton: only when a ``tritonserver`` is on PATH (reported; not driven by this script).
Without a GPU it runs the same steps on the CPU at a small size (NumPy scorer, torch fp32 extraction at
batch 1), says what it skipped, and still writes the JSON. Works from a plain checkout (no pip install):
the exdd packages are mapped from the source folders when ``import exdd_scoring`` fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

from scripts.harness import BenchResult, latency_stats, params_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/tools/ -> the repository


def import_exdd() -> None:
    """Make ``exdd`` (with its sub-packages) and ``exdd_scoring`` importable from the source tree."""
    if not os.environ.get("EXDD_GPU_CHECK_SHIM"):  # set by the test to exercise the device's path
        try:
            import exdd.offline.features  # noqa: F401
            import exdd_scoring  # noqa: F401

            return
        except ImportError:
            pass
    shim = tempfile.mkdtemp(prefix="exdd-shim-")
    pkg = os.path.join(shim, "exdd")
    os.makedirs(pkg)
    for f in os.listdir(os.path.join(ROOT, "exdd")):
        if f.endswith(".py"):
            os.symlink(os.path.join(ROOT, "exdd", f), os.path.join(pkg, f))
    for name in ("offline", "export", "serving", "client", "report"):
        os.symlink(os.path.join(ROOT, name), os.path.join(pkg, name))
    os.symlink(os.path.join(ROOT, "exdd_scoring"), os.path.join(shim, "exdd_scoring"))
    sys.path.insert(0, shim)
    for m in [m for m in sys.modules if m in ("exdd", "exdd_scoring") or m.startswith(("exdd.", "exdd_scoring."))]:
        del sys.modules[m]


def sig(x: float) -> float:
    """x to 4 significant digits (a slow CPU fallback gives figures well below 1)."""
    return float(f"{x:.4g}")


def timed(fn, seconds: float, min_reps: int = 2, sync=lambda: None) -> float:
    """Median seconds of fn() over at least min_reps calls and about `seconds` of wall time (after a warm-up)."""
    fn()
    sync()
    ts: List[float] = []
    t_end = time.perf_counter() + seconds
    while len(ts) < min_reps or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
        if len(ts) >= 200:
            break
    return latency_stats(ts)["p50_ms"] / 1000


def load_images(data: str, split: str, n: int, hw, label=None) -> np.ndarray:
    """Up to n images of a KSDD2/MVTec dataset split (label 0/1 or any), else generated surfaces."""
    from exdd.export.onnx_export import generated_images
    from exdd.export.onnx_export import load_images as load

    if data and os.path.isdir(data):
        from exdd.datasets import load_split

        s = [x for x in load_split(data, split) if label is None or x.label == label]
        if s:
            step = max(1, len(s) // n)
            return load([x.path for x in s[::step][:n]], hw)
    return generated_images(n, hw, seed={"train": 0, "test": 1}[split] + (label or 0) * 7)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file of figures to write")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "magnetic_tile"))
    ap.add_argument(
        "--weights", default=os.path.join(ROOT, "..", "shared", "weights", "wrn50-random0-bncal.safetensors")
    )
    ap.add_argument("--banks", default=None, help="a bank directory (default: built from --data features)")
    ap.add_argument("--input-size", default="632x224")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--bank-size", type=int, default=46_000, help="negative bank size when built here")
    ap.add_argument("--pos-size", type=int, default=4_000)
    ap.add_argument("--bank-images", type=int, default=24)
    ap.add_argument("--check-images", type=int, default=16)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=8.0, help="timing window per measurement")
    ap.add_argument(
        "--max-blocks",
        default=None,
        help="comma-separated kNN distance-block sizes (elements) to time the CuPy scorer at, besides the default",
    )
    ap.add_argument("--cpu", action="store_true", help="force the CPU fallback")
    ap.add_argument("--cpu-bank-size", type=int, default=4_000, help="negative bank size in the CPU fallback")
    args = ap.parse_args()
    t_start = time.time()
    log = lambda s: print(f"[{time.time() - t_start:6.1f}s] {s}", file=sys.stderr, flush=True)  # noqa: E731
    import_exdd()
    import exdd

    rep_exdd_from = os.path.dirname(os.path.abspath(exdd.__file__))
    import torch

    from exdd.offline.features import build_extractor
    from exdd_scoring import DEFAULT_MODE, Bank, BankPair, Scorer, load_banks
    from exdd_scoring.knn import bank_neighbors

    rep: Dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "exdd_from": rep_exdd_from,
        "skipped": [],
        "figures": {},
        "checks": {},
    }
    gpu = torch.cuda.is_available() and not args.cpu
    cp = None
    if gpu:
        try:
            import cupy as cp

            cp.cuda.runtime.getDeviceCount()
            rep["cupy"] = cp.__version__
            rep["device"] = torch.cuda.get_device_name(0)
        except Exception as e:  # reported
            rep["skipped"].append(f"cupy unusable ({type(e).__name__}: {e}): CuPy steps skipped")
            cp = None
    else:
        rep["skipped"].append(
            "no CUDA GPU (or --cpu): CPU fallback at a small size; CuPy, GPU extraction and "
            "GPU end-to-end figures skipped"
        )
    rep["mode"] = "gpu" if gpu else "cpu-fallback"
    hw = tuple(int(v) for v in args.input_size.lower().split("x"))
    batches = [int(b) for b in args.batches.split(",")] if gpu else [1]
    weights = args.weights if os.path.isfile(args.weights) else "random:0"
    rep["weights"] = weights
    if weights == "random:0":
        rep["skipped"].append(f"{args.weights} not found: random:0 weights (timings valid, scores not meaningful)")
    dev = torch.device("cuda" if gpu else "cpu")
    model, info = build_extractor(weights, args.d, 0, hw)
    model = model.to(dev).eval()
    if gpu:
        model = model.half().to(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    @torch.inference_mode()
    def extract(imgs_host: np.ndarray) -> torch.Tensor:
        out = []
        for i in range(0, len(imgs_host), 32):
            x = torch.from_numpy(np.ascontiguousarray(imgs_host[i : i + 32])).to(dev, non_blocking=True)
            out.append(model(x).float())
        return torch.cat(out)

    # 1. banks
    if args.banks:
        pair = load_banks(args.banks, expected_features=info)
        rep["banks"] = {"source": args.banks}
    else:
        n_neg = args.bank_size if gpu else args.cpu_bank_size
        n_pos = args.pos_size if gpu else max(200, args.cpu_bank_size // 10)
        nimg = args.bank_images if gpu else 2
        normal = extract(load_images(args.data, "train", nimg, hw, 0)).cpu().numpy().reshape(-1, args.d)
        defect = extract(load_images(args.data, "train", max(2, nimg // 4), hw, 1)).cpu().numpy().reshape(-1, args.d)
        rng = np.random.default_rng(0)

        def sample(src: np.ndarray, n: int) -> np.ndarray:
            if n > len(src):
                reps = int(np.ceil(n / len(src)))
                std = src.std(axis=0, keepdims=True)
                src = np.concatenate(
                    [src] + [src + rng.normal(0, 0.05, src.shape).astype(np.float32) * std for _ in range(reps - 1)]
                )
            return np.ascontiguousarray(src[rng.choice(len(src), n, replace=False)], dtype=np.float32)

        neg, pos = sample(normal, n_neg), sample(defect, n_pos)
        t = time.time()
        xp_nb = cp if cp is not None else np
        nb_neg = bank_neighbors(xp_nb.asarray(neg), 3, xp_nb)
        nb_pos = bank_neighbors(xp_nb.asarray(pos), 3, xp_nb)
        if cp is not None:
            nb_neg, nb_pos = cp.asnumpy(nb_neg), cp.asnumpy(nb_pos)
        manifest = {"features": info, "k": 3, "default_mode": DEFAULT_MODE}  # the served default
        pair = BankPair(Bank(neg, nb_neg), Bank(pos, nb_pos), manifest)
        src = args.data if os.path.isdir(args.data) else "generated surfaces"
        rep["banks"] = {
            "source": f"random real patches of {src}"
            f" ({len(normal)} normal / {len(defect)} defect patches, jitter-tiled when short)",
            "negative": int(neg.shape[0]),
            "positive": int(pos.shape[0]),
            "neighbours_s": round(time.time() - t, 2),
        }
    log(f"banks: {rep['banks']}")

    # 2. parity CuPy vs NumPy on real test features
    check = load_images(args.data, "test", args.check_images if gpu else 2, hw)
    feats = extract(check).cpu().numpy()
    sc_np = Scorer(pair, xp=np)
    t = time.perf_counter()
    ref = sc_np.score(feats[:8])
    rep["figures"]["numpy_scorer_ms_per_image"] = round(1000 * (time.perf_counter() - t) / min(8, len(feats)), 1)
    if cp is not None:
        sc_cp = Scorer(pair, xp=cp)
        got = sc_cp.score(cp.asarray(feats[:8]))
        worst = 0.0
        for m in ref.scores:
            a, b = ref.scores[m], cp.asnumpy(got.scores[m])
            worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12))))
        map_worst = 0.0
        for m in ref.maps:
            a, b = ref.maps[m], cp.asnumpy(got.maps[m])
            map_worst = max(map_worst, float(np.max(np.abs(a - b)) / max(float(np.abs(a).max()), 1e-12)))
        rep["checks"]["cupy_vs_numpy"] = {
            "images": int(min(8, len(feats))),
            "score_max_rel_diff": worst,
            "map_max_rel_diff": map_worst,
            "ok": bool(worst <= 1e-4 and map_worst <= 1e-4),
        }
    else:
        again = Scorer(pair, xp=np).score(feats[:8])
        same = all(np.allclose(again.scores[m], ref.scores[m], rtol=1e-6) for m in ref.scores)
        rep["checks"]["numpy_repeatable"] = {"images": int(min(8, len(feats))), "ok": bool(same)}
        rep["skipped"].append("cupy_vs_numpy parity: no CuPy/GPU")
    log(f"checks: {rep['checks']}")

    # 3-5. frames/s
    window = args.seconds if gpu else 0.0
    sc_dev = Scorer(pair, xp=cp) if cp is not None else sc_np
    for b in batches:
        imgs = np.repeat(check[:1], b, axis=0)
        x_dev = torch.from_numpy(imgs).to(dev)
        with torch.inference_mode():
            s_ext = timed(lambda: model(x_dev), window, sync=sync)
        rep["figures"][f"extract_fps_batch{b}"] = sig(b / s_ext)
        fb = np.repeat(feats[:1], b, axis=0)
        f_dev = cp.asarray(fb) if cp is not None else fb
        mode = sc_dev.default_mode
        sync_sc = cp.cuda.Stream.null.synchronize if cp is not None else (lambda: None)
        # as the served scorer model calls it: the served mode's score and map only
        s_sc = timed(lambda: sc_dev.score(f_dev, map_modes=(mode,), modes=(mode,)), window, sync=sync_sc)
        rep["figures"][f"score_fps_batch{b}"] = sig(b / s_sc)
        s_ev = timed(lambda: sc_dev.evidence(f_dev), window, sync=sync_sc)  # both banks' kNN and peaks alone
        rep["figures"][f"evidence_fps_batch{b}"] = sig(b / s_ev)
        if cp is not None and args.max_blocks:
            for mb in (int(v) for v in args.max_blocks.split(",")):
                sc_mb = Scorer(pair, xp=cp, max_block=mb)
                s_mb = timed(lambda: sc_mb.score(f_dev, map_modes=(mode,), modes=(mode,)), window, sync=sync_sc)
                rep["figures"][f"score_fps_batch{b}_max_block{mb}"] = sig(b / s_mb)
                log(f"batch {b}: score at max_block {mb}: {b / s_mb:.1f} frames/s")

        def e2e() -> None:
            with torch.inference_mode():
                f = model(torch.from_numpy(imgs).to(dev)).float().contiguous()
            fx = cp.from_dlpack(f) if cp is not None else f.numpy()
            out = sc_dev.score(fx, map_modes=(mode,), modes=(mode,))
            if cp is not None:
                cp.asnumpy(out.scores[mode]), cp.asnumpy(out.maps[mode])

        s_e2e = timed(e2e, window)
        rep["figures"][f"end_to_end_fps_batch{b}"] = sig(b / s_e2e)
        log(
            f"batch {b}: extract {b / s_ext:.1f} / evidence {b / s_ev:.1f} / score {b / s_sc:.1f} / "
            f"end to end {b / s_e2e:.1f} frames/s"
        )
    rep["figures"]["bank_negative"] = int(pair.negative.size)
    rep["figures"]["input_size"] = list(hw)

    # 6. Triton
    ts = shutil.which("tritonserver")
    if ts:
        rep["triton"] = {
            "tritonserver": ts,
            "note": "present; drive it with `exdd export repository --kind gpu` + "
            "`exdd serve` + `exdd client bench` (not run by this script)",
        }
    else:
        rep["skipped"].append("Triton: no tritonserver on PATH")
    rep["wall_s"] = round(time.time() - t_start, 1)
    record = BenchResult("gpu_check", params_of(args), rep)
    record.save(args.out, indent=2)
    print(record.dumps(indent=2))
    ok = all(c.get("ok", True) for c in rep["checks"].values())
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
