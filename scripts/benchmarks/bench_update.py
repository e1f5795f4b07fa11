"""Bank updates on a real dataset: half build + update vs full build, and teaching false alarms.

1. Full build (all kept normal training images) vs a build from a seeded half of them followed
   by `update` with the other half: image / pixel AUROC of every mode on the test split, and the
   time of each (bank stage measured; feature extraction = the measured per-image rate x images).
2. Teach the 5 worst false alarms of the test normals (a set the banks never saw) to the full
   banks: false-alarm rate at the calibrated threshold on the *other* test normals, before and
   after, and the defect recall at that threshold, per mode.

Raw features are cached (offline/feature_cache.py) and projected, as scripts/studies/sweep_d.py does.

  nice -n 10 .venv/bin/python -m scripts.benchmarks.bench_update --dataset ../shared/data/ksdd1_dev \
      --weights ../shared/weights/wrn50-random0-bncal.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings

import numpy as np

from exdd.datasets import duplicates_across, holdout_split, load_split
from exdd.metrics import paired_bootstrap_diff, spearman
from exdd.offline.build import BuildConfig, build
from exdd.offline.calibrate import threshold
from exdd.offline.evaluate import metrics_of, score_features
from exdd.offline.features import fingerprint, make_projection
from exdd.offline.update import update
from exdd_scoring import MODES, Scorer, load_banks
from scripts.common import cache_folder, peak_rss_gb, raw_caches, save_json
from scripts.harness import BenchResult, metrics_in, params_of


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scorer_of(bank_dir: str, info) -> Scorer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return Scorer(load_banks(bank_dir, info))


def extraction_rate(weights: str, hw, samples) -> float:
    """Seconds per image of `offline build`'s torch extractor (d 256) over samples, after one warm-up batch."""
    from exdd.offline.extract import extract
    from exdd.offline.features import build_extractor, grid_of

    model, _ = build_extractor(weights, 256, 0, hw)
    extract(samples[:2], model, hw, grid_of(hw), 256)
    t = time.perf_counter()
    extract(samples, model, hw, grid_of(hw), 256)
    return (time.perf_counter() - t) / max(len(samples), 1)


def markdown(res) -> str:
    """The BENCHMARKS.md tables of one bench.json."""
    name = os.path.basename(os.path.normpath(res["dataset"]))
    out = [
        f"**{name}** ({res['normals_kept']} normal training images in the banks: half {res['half_a']} + "
        f"update {res['half_b']}; extraction {res['extract_s_per_image']:.2f} s/image measured)",
        "",
        "| banks | negative bank | bank stage s | images extracted | total s (est.) | "
        + " | ".join(f"{m} image / pixel AUROC" for m in MODES)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(MODES),
    ]
    for k, label in (("full", "full build"), ("half", "half build"), ("update", "half + update")):
        r = res[k]
        mets = " | ".join(f"{r['metrics'][m]['image_auroc']:.4f} / {r['metrics'][m]['pixel_auroc']:.4f}" for m in MODES)
        out.append(
            f"| {label} | {r['negative']} | {r['bank_s']} | {r['images_extracted']} | {r['total_s_est']} | {mets} |"
        )
    if "update_minus_full_image_auroc" in res:
        out += [
            "",
            "Image AUROC, half + update minus full build (90% paired bootstrap interval over the test images): "
            + "; ".join(
                f"{m} {v['diff']:+.3f} [{v['ci90'][0]:+.3f}, {v['ci90'][1]:+.3f}]"
                for m, v in res["update_minus_full_image_auroc"].items()
            ),
            "",
            "Image scores of the updated banks vs the full build's, Spearman rank correlation over the test "
            "images: "
            + "; ".join(
                f"{m} {v.get('score_rank_correlation', float('nan')):.3f}"
                for m, v in res["update_minus_full_image_auroc"].items()
            ),
        ]
    if "teach" in res and res["teach"]:
        out += [
            "",
            f"Teaching: threshold = {res.get('teach_threshold', 'the build calibrated thresholds')}.",
            "",
            "| mode | threshold | taught: above thr. before -> after | false alarms on the other normals "
            "before -> after | defect recall before -> after | update s (+ extraction est.) | negative bank |",
            "|---|---|---|---|---|---|---|",
        ]
        for m, r in res["teach"].items():
            n = r["rest_normals"]
            out.append(
                f"| {m} | {r['threshold']:.4g} | {r['taught_above_threshold']}/5 -> "
                f"{r.get('taught_above_threshold_after', '?')}/5 | "
                f"{round(r['far_rest_before'] * n)}/{n} ({r['far_rest_before']:.3f}) -> "
                f"{round(r['far_rest_after'] * n)}/{n} ({r['far_rest_after']:.3f}) | "
                f"{r['recall_before']:.3f} -> {r['recall_after']:.3f} | {r['update_s']} "
                f"({r['update_s_with_extraction_est']}) | {r['negative_before']} -> {r['negative_after']} |"
            )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", default=None, help="Print the markdown tables of this bench.json and exit.")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--input-size", default="632x224")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--out", default="runs/bench_update")
    ap.add_argument("--teach", type=int, default=5, help="false alarms taught (0: no teaching part)")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the two halves of the normals")
    ap.add_argument(
        "--teach-rule",
        default="fpr",
        choices=("fpr", "build"),
        help="threshold of the teaching test: fpr rule at --teach-fpr on the held-out training images, "
        "or the build's own calibrated threshold",
    )
    ap.add_argument("--teach-fpr", type=float, default=0.01)
    ap.add_argument("--teach-only", action="store_true", help="only the teaching part, on the banks of an earlier run")
    ap.add_argument(
        "--rate-images", type=int, default=16, help="images timed for the extraction rate when the cache has none"
    )
    if "--report" in sys.argv:
        print(markdown(json.load(open(sys.argv[sys.argv.index("--report") + 1]))))
        return
    a = ap.parse_args()
    hw = tuple(int(v) for v in a.input_size.split("x"))
    name = os.path.basename(os.path.normpath(a.dataset))
    out = os.path.join(a.out, name)
    os.makedirs(out, exist_ok=True)
    caches, rate = {}, {}
    for split in ("train", "test"):
        folder = cache_folder(a.cache, a.dataset, hw, split)
        fresh = not os.path.isfile(os.path.join(folder, "meta.json"))
        t0 = time.time()
        caches.update(raw_caches(a.dataset, a.weights, hw, a.cache, splits=(split,)))
        if fresh:
            rate[split] = (time.time() - t0) / max(len(caches[split].paths), 1)
            save_json(os.path.join(folder, "rate.json"), {"s_per_image": rate[split]}, indent=None)
        else:  # a cache made by another script has no recorded rate: estimates are then left out (nan)
            rp = os.path.join(folder, "rate.json")
            rate[split] = json.load(open(rp))["s_per_image"] if os.path.isfile(rp) else float("nan")
    s_img = rate["train"]
    if not np.isfinite(s_img):  # no rate recorded with the cache: time the torch extractor (what build runs) here
        s_img = extraction_rate(a.weights, hw, load_split(a.dataset, "train")[: a.rate_images])
        log(f"extraction: {s_img:.2f} s/image (torch fp32, timed now on {a.rate_images} training images)")
    else:
        log(f"extraction: {s_img:.2f} s/image (raw, measured while the cache was made)")
    proj = make_projection(a.d, 0)
    info = fingerprint(caches["train"].weights_id, proj, 0, hw)
    cfg = BuildConfig()
    train_feat = caches["train"].featurizer(proj)
    train = load_split(a.dataset, "train")
    kept, held = holdout_split(train, cfg.holdout, cfg.seed)
    normals = [s for s in kept if s.label == 0]
    order = np.random.default_rng(a.split_seed).permutation(len(normals))
    half_a = [normals[i] for i in sorted(order[: len(normals) // 2])]
    half_b = [normals[i] for i in sorted(order[len(normals) // 2 :])]
    excluded = {s.path for s in half_b}
    other = [s for s in kept if s.label == 1] + list(held)

    def without_b(samples, with_mask, progress):
        return train_feat([s for s in samples if s.path not in excluded], with_mask, progress)

    test = caches["test"]
    # test images that are copies of training images are left out, as `offline evaluate` does
    leaked = {p for p, _ in duplicates_across(load_split(a.dataset, "test"), train)}
    test_samples, test_rows = test.rows_of([s for s in load_split(a.dataset, "test") if s.path not in leaked])
    log(f"test: {len(test_samples)} images ({len(leaked)} copies of training images left out)")
    test_feats = test.project(test_rows, proj, np.float32)
    labels = np.array([s.label for s in test_samples])

    def evaluate(bank_dir):
        def batches(bs=8):
            for i in range(0, len(test_rows), bs):
                r = test_rows[i : i + bs]
                yield test_samples[i : i + bs], test_feats[i : i + bs], [test.masks[j] for j in r]

        scored = score_features(batches(), len(test_rows), scorer_of(bank_dir, info), hw, True)
        met = metrics_of(scored)
        image_scores[bank_dir] = scored.scores
        return {m: {"image_auroc": met[m]["image_auroc"], "pixel_auroc": met[m].get("pixel_auroc")} for m in MODES}

    image_scores = {}

    if a.teach_only:  # reuse the builds of an earlier run (its bench.json and full/ banks)
        res = metrics_in(json.load(open(os.path.join(out, "bench.json"))))
        s_img = res["extract_s_per_image"]
    else:
        res = {
            "dataset": a.dataset,
            "split_seed": a.split_seed,
            "weights": caches["train"].weights_id,
            "input_size": list(hw),
            "d": a.d,
            "extract_s_per_image": round(s_img, 3),
            "normals_kept": len(normals),
            "half_a": len(half_a),
            "half_b": len(half_b),
            "other_images_per_build": len(other),
            "test_images": len(test_samples),
            "test_copies_of_training_left_out": len(leaked),
        }
        # every build extracts its normals + the defective and held-out images; the update only half_b
        t, c = time.time(), time.process_time()
        full = build(a.dataset, os.path.join(out, "full"), None, info, cfg, featurize=train_feat)
        res["full"] = {
            "bank_s": round(time.time() - t, 2),
            "bank_cpu_s": round(time.process_time() - c, 2),
            "images_extracted": len(normals) + len(other),
            "negative": full.manifest.coreset.negative.size,
        }
        log(f"full build: {res['full']}")
        t, c = time.time(), time.process_time()
        half = build(a.dataset, os.path.join(out, "half"), None, info, cfg, featurize=without_b)
        res["half"] = {
            "bank_s": round(time.time() - t, 2),
            "bank_cpu_s": round(time.process_time() - c, 2),
            "images_extracted": len(half_a) + len(other),
            "negative": half.manifest.coreset.negative.size,
        }
        log(f"half build: {res['half']}")
        t, c = time.time(), time.process_time()
        upd = update(os.path.join(out, "half"), os.path.join(out, "half+update"), half_b, [], train_feat)
        res["update"] = {
            "bank_s": round(time.time() - t, 2),
            "bank_cpu_s": round(time.process_time() - c, 2),
            "images_extracted": len(half_b),
            "negative": upd.manifest.coreset.negative.size,
            "stages_s": upd.seconds,
            "radius_parent": half.manifest.coreset.negative.radius,
            "radius_added": upd.manifest.coreset.negative.added_radius,
        }
        log(f"update: {res['update']}")
        for k in ("full", "half", "update"):
            res[k]["total_s_est"] = round(res[k]["bank_s"] + s_img * res[k]["images_extracted"], 1)
        for k, d in (("full", "full"), ("half", "half"), ("update", "half+update")):
            t = time.time()
            res[k]["metrics"] = evaluate(os.path.join(out, d))
            log(f"{k}: {res[k]['metrics']} (scored in {time.time() - t:.0f}s)")
        # the update vs the full build on the same test images: paired bootstrap of the image AUROC difference
        res["update_minus_full_image_auroc"] = {}
        for m in MODES:
            diff, lo, hi = paired_bootstrap_diff(
                image_scores[os.path.join(out, "full")][m], image_scores[os.path.join(out, "half+update")][m], labels
            )
            full_s, upd_s = (image_scores[os.path.join(out, k)][m] for k in ("full", "half+update"))
            res["update_minus_full_image_auroc"][m] = {
                "diff": round(diff, 4),
                "ci90": [round(lo, 4), round(hi, 4)],
                "score_rank_correlation": round(spearman(upd_s, full_s), 4),
            }
        log(f"update - full, image AUROC (90% paired bootstrap): {res['update_minus_full_image_auroc']}")
        BenchResult("bench_update", params_of(a), res).save(os.path.join(out, "bench.json"))

    if a.teach == 0:
        print(markdown(res))
        return
    # 2. teach the worst false alarms of the test normals
    sc_full = scorer_of(os.path.join(out, "full"), info)

    def scores_of(scorer, feats):
        outs = [scorer.score(feats[i : i + 8], map_modes=()) for i in range(0, len(feats), 8)]
        return {m: np.concatenate([o.scores[m] for o in outs]) for m in MODES}

    if a.teach_rule == "build":  # the threshold the build calibrated (its rule, on its held-out images)
        thr = sc_full.thresholds
    else:  # a false-alarm budget: the fpr rule on the build's held-out training images
        ex_held = train_feat(list(held), False, None)
        held_scores = scores_of(sc_full, ex_held.features.astype(np.float32))
        held_labels = np.array([s.label for s in ex_held.samples])
        thr = {m: threshold(held_scores[m], held_labels, "fpr", a.teach_fpr)["value"] for m in MODES}
    res["teach_threshold"] = (
        "the build's calibrated thresholds"
        if a.teach_rule == "build"
        else f"fpr rule, target {a.teach_fpr}, on the build's {len(held)} held-out training images"
    )
    before = scores_of(sc_full, test_feats)
    normal_idx = np.flatnonzero(labels == 0)
    res["teach"] = {}
    for m in MODES:
        worst = normal_idx[np.argsort(-before[m][normal_idx], kind="stable")[: a.teach]]
        rest = np.setdiff1d(normal_idx, worst)
        d_out = os.path.join(out, f"taught-{m}")
        shutil.rmtree(d_out, ignore_errors=True)
        t = time.time()
        taught = update(
            os.path.join(out, "full"),
            d_out,
            [test_samples[i] for i in worst],
            [],
            test.featurizer(proj),
            note=f"{a.teach} worst false alarms ({m})",
        )
        t_upd = time.time() - t
        after = scores_of(scorer_of(d_out, info), test_feats)
        defect = labels == 1
        row = {
            "threshold": thr[m],
            "taught_scores_before": [round(float(before[m][i]), 4) for i in worst],
            "taught_above_threshold": int((before[m][worst] >= thr[m]).sum()),
            "taught_above_threshold_after": int((after[m][worst] >= thr[m]).sum()),
            "rest_normals": int(rest.size),
            "far_rest_before": float((before[m][rest] >= thr[m]).mean()),
            "far_rest_after": float((after[m][rest] >= thr[m]).mean()),
            "recall_before": float((before[m][defect] >= thr[m]).mean()),
            "recall_after": float((after[m][defect] >= thr[m]).mean()),
            "update_s": round(t_upd, 2),
            "update_s_with_extraction_est": round(t_upd + s_img * a.teach, 1),
            "negative_before": taught.manifest.updates[-1].negative.size_before,
            "negative_after": taught.manifest.updates[-1].negative.size_after,
        }
        res["teach"][m] = row
        log(f"teach {m}: {row}")
    res["peak_rss_gb"] = round(peak_rss_gb(), 2)
    BenchResult("bench_update", params_of(a), res).save(os.path.join(out, "bench.json"))
    print(markdown(res))


if __name__ == "__main__":
    main()
