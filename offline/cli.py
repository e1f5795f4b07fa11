"""``exdd offline``: build banks, evaluate, synthesize defects, sweep."""

from __future__ import annotations

import os
import time
from typing import Any, Dict

import click
import numpy as np

from exdd import defaults
from exdd.cli_common import extractor_runtime_option, fail, input_size_option, parse_hw
from exdd.datasets import layout_choices
from exdd.ray_cluster import ray_options
from exdd_scoring.bank import MIN_K
from exdd_scoring.scores import DEFAULT_GAMMA, DEFAULT_MODE, MODES, TOPK_FRACTION

from .calibrate import RULES
from .projection import PROJECTIONS, projection_choices


def _extractor(weights: str, d: int, seed: int, input_hw):
    import torch

    from .features import build_extractor
    from .weights import WeightsError

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        model, info = build_extractor(weights, d, seed, input_hw)
    except WeightsError as e:
        fail(str(e))
    _note_weights(info)
    return model, info


def _bank_extractor(bank_dir: str, manifest, weights=None):
    """The extractor the banks were built with: their weights unless given, their projection (a fitted one read
    from the bank folder's projection.npy, never refitted)."""
    import torch

    from exdd_scoring import BankError

    from .features import bank_extractor
    from .weights import WeightsError

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        model, info = bank_extractor(bank_dir, manifest, weights)
    except (WeightsError, BankError) as e:
        fail(str(e))
    _note_weights(info)
    return model, info


def _note_weights(info) -> None:
    from .weights import is_random

    if is_random(info["weights"]):
        click.echo(f"note: weights {info['weights']} -- RANDOM-INIT backbone, results are not meaningful", err=True)
    else:
        click.echo(f"weights: {info['weights']}", err=True)


def _onnx_model(extractor_onnx: str, info, runtime: str = "onnxruntime"):
    """The exported ONNX run by a runtime (onnxruntime | openvino-bf16 | openvino-f32) in place of the torch
    extractor (same features fingerprint)."""
    from exdd_scoring import BankError
    from exdd_scoring.bank import check_features
    from exdd_scoring.onnx_metadata import OnnxMetadataError

    from .onnx_features import OnnxExtractor

    try:
        name, _, precision = runtime.partition("-")
        onnx_model = OnnxExtractor(extractor_onnx, runtime=name, precision=precision or "bf16")
        check_features(onnx_model.features, info, f"--extractor {extractor_onnx}")
    except (OnnxMetadataError, BankError) as e:
        fail(str(e))
    except ImportError as e:
        fail(f"--extractor-runtime {runtime}: {e} (pip install openvino)")
    click.echo(f"extractor: {extractor_onnx} ({onnx_model.precision}, {runtime})", err=True)
    return onnx_model


@click.group()
def offline() -> None:
    """Build banks from a dataset, synthesize defects, evaluate."""


@offline.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Bank directory to write.")
@click.option(
    "--weights", default="imagenet", show_default=True, help="imagenet | PATH (.safetensors/.pth) | random:SEED"
)
@click.option("--d", "d", default=defaults.D, show_default=True, help="Projection dimension (1536 -> d).")
@click.option("--projection-seed", default=0, show_default=True, help="Seed of the random projection.")
@click.option(
    "--projection",
    "projection",
    default=defaults.PROJECTION,
    show_default=True,
    type=click.Choice(projection_choices()),
    help="random: the seeded Gaussian matrix; pca: the top-d principal directions of the normal training "
    "patches, fitted here (one more extraction pass over them) and stored in --out as projection.npy; "
    "export, evaluate and update read it from there.",
)
@click.option(
    "--projection-images",
    default=defaults.PROJECTION_IMAGES,
    show_default=True,
    type=click.IntRange(min=0),
    help="A fitted projection reads at most this many normal training images (evenly spaced in sorted order; 0: all).",
)
@input_size_option
@click.option("--layout", default="auto", type=click.Choice(layout_choices(labelled_only=True)), show_default=True)
@click.option("--neg-ratio", default=defaults.NEG_RATIO, show_default=True, help="Coreset ratio of the negative bank.")
@click.option("--pos-ratio", default=defaults.POS_RATIO, show_default=True, help="Coreset ratio of the positive bank.")
@click.option(
    "--min-bank", default=defaults.MIN_BANK, show_default=True, help="A bank keeps at least this many (capped at N)."
)
@click.option(
    "--k",
    default=defaults.K,
    show_default=True,
    type=click.IntRange(min=MIN_K),
    help=f"Neighbourhood size of the reweighting (at least {MIN_K}: k-1 neighbours besides the nearest).",
)
@click.option(
    "--min-cover",
    default=defaults.MIN_COVER,
    show_default=True,
    help="Defect patch: cell covered by the mask at least this much.",
)
@click.option(
    "--synthetic",
    "synthetic_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of synthetic defects (NNNNN.png + NNNNN_GT.png); repeatable.",
)
@click.option(
    "--holdout",
    default=defaults.HOLDOUT,
    show_default=True,
    help="Fraction of training images kept out for calibration (per label, chosen by a hash of each "
    "image's content salted by --seed).",
)
@click.option("--threshold-rule", default="f1", type=click.Choice(list(RULES)), show_default=True)
@click.option("--target-fpr", default=defaults.TARGET_FPR, show_default=True, help="For --threshold-rule fpr.")
@click.option(
    "--mode",
    "default_mode",
    default=DEFAULT_MODE,
    type=click.Choice(list(MODES)),
    show_default=True,
    help="Mode whose score the served model returns as SCORE.",
)
@click.option(
    "--gamma",
    default=DEFAULT_GAMMA,
    show_default=True,
    type=click.FloatRange(0.0, 4.0),
    help="Exponent of the dual map a- (a-/a+)^gamma (modes dual, dual_bounded, dual_topk; the head's inputs).",
)
@click.option(
    "--topk",
    default=TOPK_FRACTION,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Fraction of the map's pixels whose mean is the image score of modes dual_topk and ratio_topk "
    "(scoring.topk; the threshold is calibrated on it).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    help="Salts which training images are held out (--holdout): the only thing it moves. The coreset has "
    "no seed and the images are stacked by content, so the same images and seed give the same banks "
    "whatever the file names.",
)
@click.option("--batch-size", default=defaults.BATCH_SIZE, show_default=True)
@click.option(
    "--chunk-rows",
    default=defaults.CHUNK_ROWS,
    show_default=True,
    help="Coreset chunk (patch rows) of the chunked greedy.",
)
@ray_options
@click.option("--ray-workers", type=int, default=None, help="With --ray: extractor actors (default: one per CPU/GPU).")
@click.option(
    "--ray-shard-images",
    default=64,
    show_default=True,
    help="With --ray: images per task (rounded up to whole batches of 16 and of --batch-size).",
)
@click.option(
    "--ray-threads",
    type=int,
    default=None,
    help="With --ray: torch threads per extractor actor (default: this machine's CPU count, as the "
    "single-process build uses, so the features are bit-identical).",
)
@click.option(
    "--extractor",
    "extractor_onnx",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Extract with this exported ONNX (e.g. `export onnx --precision int8`), run by "
    "--extractor-runtime, instead of torch fp32; its features fingerprint must match "
    "--weights/--d/--input-size.",
)
@extractor_runtime_option
@click.option(
    "--roi",
    "roi_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Region of interest: a mask picture over the image frame (white = inspect, black = never look: "
    "fixtures, edges, labels); stored in --out as roi.png with its hash; patches outside enter "
    "neither bank and raise no alarm on any path.",
)
@click.option(
    "--classes",
    "classes_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="CSV naming each training image's defect class (columns image or new_image, relative to DATASET, "
    "and class or defect_type): the answer's nearest_class. MVTec layouts need none (folder names).",
)
def build(
    dataset,
    out_dir,
    weights,
    d,
    projection_seed,
    projection,
    projection_images,
    input_size,
    layout,
    neg_ratio,
    pos_ratio,
    min_bank,
    k,
    min_cover,
    synthetic_dirs,
    holdout,
    threshold_rule,
    target_fpr,
    default_mode,
    gamma,
    topk,
    seed,
    batch_size,
    chunk_rows,
    ray_address,
    ray_cpus,
    ray_workers,
    ray_shard_images,
    ray_threads,
    extractor_onnx,
    extractor_runtime,
    roi_path,
    classes_path,
):
    """Build the negative and positive banks of DATASET into --out."""
    from exdd.datasets import DatasetError
    from exdd.progress import bar

    from .build import BuildConfig
    from .build import build as run_build
    from .line_inputs import line_inputs

    if ray_address is not None and (roi_path or classes_path):
        fail("--roi / --classes with --ray: the Ray build does not apply them yet; build without --ray")
    try:
        line = line_inputs(roi_path, classes_path, parse_hw(input_size))
    except ValueError as e:
        fail(str(e))
    cfg = BuildConfig(
        neg_ratio=neg_ratio,
        pos_ratio=pos_ratio,
        min_size=min_bank,
        k=k,
        min_cover=min_cover,
        holdout=holdout,
        seed=seed,
        threshold_rule=threshold_rule,
        target_fpr=target_fpr,
        default_mode=default_mode,
        gamma=gamma,
        topk=topk,
        batch_size=batch_size,
        chunk_rows=chunk_rows,
    )
    model, info = _extractor(weights, d, projection_seed, parse_hw(input_size))
    fitted = None
    if PROJECTIONS[projection].fitted:
        model, info, fitted = _fitted_extractor(
            projection, projection_images, model, info, dataset, cfg, synthetic_dirs, layout
        )
    if extractor_onnx:
        model = _onnx_model(extractor_onnx, info, extractor_runtime)
    info["weights_source"] = os.path.abspath(weights) if os.path.isfile(weights) else weights
    ray = None
    if ray_address is not None and extractor_onnx:
        fail("--extractor with --ray: the Ray actors extract with torch; build without --ray to use an ONNX extractor")
    if ray_address is not None:  # features, coreset and calibration on Ray (offline/distributed.py)
        from exdd.ray_cluster import connect_or_fail

        ray = connect_or_fail(ray_address, ray_cpus)
    t0 = time.time()
    try:
        if ray is not None:
            from .distributed import build_ray

            res = build_ray(
                ray,
                dataset,
                out_dir,
                weights,
                info,
                cfg,
                synthetic_dirs,
                layout,
                bar,
                ray_workers,
                ray_shard_images,
                ray_threads,
                projection=fitted,
            )
        else:
            res = run_build(
                dataset, out_dir, model, info, cfg, synthetic_dirs, layout, bar, projection=fitted, line=line
            )
    except (DatasetError, ValueError) as e:
        fail(str(e))
    m = res.manifest
    cs, src = m.coreset, m.sources
    click.echo(f"banks: {out_dir}")
    click.echo(f"negative: {cs.negative.size} of {cs.negative.patches} patches ({src.normal_images} normal images)")
    click.echo(
        f"positive: {cs.positive.size} of {cs.positive.patches} patches "
        f"({src.defect_images} defective + {src.synthetic_images} synthetic images)"
    )
    for mode, v in m.thresholds.items():
        t = m.threshold.detail[mode]
        cf = f"; held-out + {t['crossfit_defects']} cross-fitted defective images" if "crossfit_defects" in t else ""
        click.echo(f"threshold[{mode}]: {v:.6g} ({t['rule']}{cf})")
    click.echo(f"time: {time.time() - t0:.1f}s")
    if res.errors:
        click.echo(f"unreadable files: {len(res.errors)} (skipped, listed in the manifest)", err=True)
    _warn_test_leak(dataset, layout)


def _line_answers(scored, scorer, banks, bank_dir: str, input_hw):
    """Issue 27: per image its answer's fields in the default mode (the box in the image's own pixels), and the
    results-level review_band and roi (the bank's roi.png)."""
    from exdd.images import ImageReadError, image_size
    from exdd_scoring.answer import answer, review_band
    from exdd_scoring.regions import box_in_image
    from exdd_scoring.roi import ROI_PNG

    mode = scorer.default_mode
    thr = scorer.thresholds.get(mode)
    ans = answer(
        scored.scores[mode],
        scored.areas,
        scored.boxes,
        scored.nearest_rows,
        mode,
        thr,
        banks.manifest.line,
        scorer.sources,
    )
    rows = []
    for i, s in enumerate(scored.samples):
        row = ans.row(i)
        if row["box"]:
            try:
                row["box"] = list(box_in_image(row["box"], input_hw, image_size(s.path)))
            except ImageReadError:
                pass
        rows.append(row)
    t1, t2 = review_band(banks.manifest.line, mode, thr)
    extra: Dict[str, Any] = {} if t1 is None else {"review_band": {"ok_below": t1, "defect_above": t2}}
    if os.path.isfile(os.path.join(bank_dir, ROI_PNG)) and banks.roi is not None:
        extra["roi"] = os.path.abspath(os.path.join(bank_dir, ROI_PNG))
    return rows, extra


def _fitted_extractor(kind: str, limit: int, model, info, dataset: str, cfg, synthetic_dirs, layout: str):
    """(extractor, features, matrix) with a projection of kind fitted on the build's normal training images
    (the plan's: the held-out ones are not read), on the backbone already loaded."""
    from exdd.datasets import DatasetError
    from exdd.progress import bar

    from .build import plan
    from .features import with_projection
    from .projection import fit_projection, fit_samples

    t0 = time.time()
    try:
        samples = fit_samples(plan(dataset, cfg, synthetic_dirs, layout).normals, limit)
        b = bar(f"projection: {kind}", len(samples), "img")
        proj = fit_projection(kind, model, samples, int(info["d"]), cfg.batch_size, 0, b.update)
        b.close()
        model, fitted_info = with_projection(model.backbone, info["weights"], model.input_hw, proj, kind)
    except (DatasetError, ValueError) as e:
        fail(str(e))
    click.echo(
        f"projection: {kind} fitted on {len(samples)} normal training images "
        f"({time.time() - t0:.1f}s), sha256 {fitted_info['projection_sha256'][:16]}...",
        err=True,
    )
    return model, fitted_info, proj


def _warn_test_leak(dataset: str, layout: str) -> None:
    """Say when the dataset's test images include copies of its training images (evaluate leaves them out)."""
    from exdd.datasets import DatasetError, leak_message, load_split, training_copies

    try:
        leaked = training_copies(dataset, load_split(dataset, "test", layout), "test", layout)
    except (DatasetError, OSError, ValueError):
        return  # no test split: nothing to compare
    if leaked:
        click.echo(f"warning: {leak_message(leaked, 'test images are')}; `offline evaluate` leaves them out", err=True)


@offline.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--banks", "bank_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--weights", default=None, help="Defaults to the weights the banks were built with.")
@click.option(
    "--layout",
    default="auto",
    type=click.Choice(layout_choices()),
    show_default=True,
    help="folder: every image below DATASET, unlabelled (scores only, no metrics).",
)
@click.option("--split", default="test", show_default=True)
@click.option("--out", "out_json", default=None, type=click.Path(dir_okay=False), help="Write results JSON here.")
@click.option("--batch-size", default=defaults.BATCH_SIZE, show_default=True)
@click.option("--no-pixel", is_flag=True, help="Skip pixel metrics (faster).")
@click.option(
    "--extractor",
    "extractor_onnx",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Extract with this exported ONNX (e.g. the one the server runs) instead of torch fp32.",
)
@extractor_runtime_option
@click.option(
    "--keep-duplicates",
    is_flag=True,
    help="Keep test images that are byte-identical to training images (excluded by default: a leak).",
)
@click.option(
    "--stability",
    is_flag=True,
    help="Also rebuild the banks from DATASET's training images with the manifest's settings and seed + 1 "
    "(other training images held out; costs one build) and print the Spearman correlation of the "
    "two builds' image scores per mode (stability[MODE]: ...), how many test images get the same "
    "IS_DEFECT from both at their own thresholds (agreement[MODE]: ..., the flips named), and what "
    "differs between the builds.",
)
def evaluate(
    dataset,
    bank_dir,
    weights,
    layout,
    split,
    out_json,
    batch_size,
    no_pixel,
    extractor_onnx,
    extractor_runtime,
    keep_duplicates,
    stability,
):
    """Score DATASET's test split with the banks; metrics of every mode side by side.

    Test images whose files are byte-identical to a training image of DATASET are left out of the metrics
    (said on stderr and recorded in the results) unless --keep-duplicates."""
    from exdd.datasets import DatasetError, leak_message, load_split, training_copies
    from exdd.metrics import confusion
    from exdd.progress import bar
    from exdd.results import ErrorRow, EvaluationResults, ImageResult
    from exdd_scoring import BankError, Scorer, load_banks, read_manifest
    from exdd_scoring.provenance import OfflineManifest

    from .evaluate import metrics_of, score_split, table

    try:
        manifest = read_manifest(bank_dir)
    except BankError as e:
        fail(str(e))
    model, info = _bank_extractor(bank_dir, manifest, weights)
    if extractor_onnx:
        model = _onnx_model(extractor_onnx, info, extractor_runtime)
    try:
        banks = load_banks(bank_dir, expected_features=info, manifest_cls=OfflineManifest)  # --stability: provenance
        samples = load_split(dataset, split, layout)
    except (BankError, DatasetError) as e:
        fail(str(e))
    leaked = training_copies(dataset, samples, split, layout)
    if leaked:
        click.echo(
            f"warning: {leak_message(leaked, f'{split} images are')}; "
            + ("kept (--keep-duplicates)" if keep_duplicates else "left out of the metrics"),
            err=True,
        )
        if not keep_duplicates:
            drop = {p for p, _ in leaked}
            samples = [s for s in samples if s.path not in drop]
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        scorer = Scorer(banks)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    second = _second_build(dataset, bank_dir, banks.manifest, model, info, layout, batch_size) if stability else None
    second_scores = {m: [] for m in MODES}

    def score_second(feats):
        r = second[1].score(feats, map_modes=())
        for m in MODES:
            second_scores[m].append(r.scores[m])

    b = bar("scoring", len(samples), "img")
    t0 = time.time()
    scored = score_split(
        samples,
        model,
        scorer,
        tuple(info["input_size"]),
        batch_size,
        not no_pixel,
        b.update,
        on_features=score_second if second else None,
    )
    b.close()
    extra = {}
    if second:
        from .stability import report_lines, stability_report

        rb, _, held_second, manifest_second = second
        cat = {m: np.concatenate(v) if v else np.zeros(0) for m, v in second_scores.items()}
        extra["stability"] = stability_report(
            scored.scores,
            cat,
            (rb.cfg.seed - 1, rb.cfg.seed),
            rb.held_first,
            held_second,
            dataset,
            banks.manifest,
            manifest_second,
            scored.samples,
        )
    labels = np.array([s.label for s in scored.samples])
    metrics = metrics_of(scored)
    thresholds = scorer.thresholds
    line, line_extra = _line_answers(scored, scorer, banks, bank_dir, tuple(info["input_size"]))
    for m, v in metrics.items():
        if m in thresholds and (labels >= 0).all():
            v["at_threshold"] = confusion(scored.scores[m], labels, thresholds[m])
    result = EvaluationResults(
        source="offline",
        dataset=os.path.abspath(dataset),
        split=split,
        banks=os.path.abspath(bank_dir),
        weights=info["weights"],
        weights_note=banks.manifest.weights_note,
        default_mode=scorer.default_mode,
        thresholds=thresholds,
        metrics=metrics,
        images=[
            ImageResult(
                s.path,
                int(s.label),
                {m: float(scored.scores[m][i]) for m in scored.scores},
                s.kind,
                float(scored.s_neg[i]),
                float(scored.s_pos[i]),
                **line[i],
            )
            for i, s in enumerate(scored.samples)
        ],
        errors=[ErrorRow(p, e) for p, e in scored.errors],
        seconds=round(time.time() - t0, 2),
        extra={
            **extra,
            **line_extra,
            **(
                {
                    "duplicates_of_training_images": {
                        "pairs": [list(x) for x in leaked],
                        "excluded": bool(leaked) and not keep_duplicates,
                    }
                }
                if leaked
                else {}
            ),
        },
    )
    if out_json:
        result.save(out_json)
    click.echo(f"weights: {info['weights']}" + (f"  [{result.weights_note}]" if result.weights_note else ""))
    click.echo(
        f"images: {len(scored.samples)} ({int((labels == 1).sum())} defective, {int((labels < 0).sum())} "
        f"unlabelled), unreadable: {len(scored.errors)}"
    )
    click.echo(table(metrics))
    if "stability" in extra:
        for line in report_lines(extra["stability"]):
            click.echo(line)
    if scored.errors:
        for p, why in scored.errors:
            click.echo(f"error: {why}", err=True)


def _second_build(dataset, bank_dir, manifest, model, info, layout, batch_size):
    """--stability: BANKS rebuilt from DATASET with seed + 1 in a temporary folder (rebuild plan, scorer, its
    held-out images, its manifest)."""
    import tempfile
    import warnings

    from exdd.datasets import DatasetError
    from exdd.progress import bar
    from exdd_scoring import BankError, Scorer, load_banks, load_projection

    from .build import build as run_build
    from .build import plan
    from .stability import rebuild_plan

    try:
        rb = rebuild_plan(manifest, os.path.join(bank_dir, "manifest.json"), dataset, layout, batch_size)
    except (BankError, DatasetError, ValueError) as e:
        fail(f"--stability: {e}")
    if manifest.updates:
        click.echo(
            f"warning: --stability: {bank_dir} was updated {len(manifest.updates)} time(s); the rebuild holds "
            f"only DATASET's training images",
            err=True,
        )
    if manifest.sources.heldout_rule is None:
        click.echo(
            f"warning: --stability: {bank_dir} was built before issue 25 (seeded coreset starts, listing-order "
            f"hold-out); the rebuild follows today's rules, so the figure also measures that change",
            err=True,
        )
    try:
        projection = load_projection(bank_dir, manifest)
    except BankError as e:
        fail(f"--stability: {e}")
    kept = (
        f", the fitted {manifest.features.projection} projection kept, not refitted" if projection is not None else ""
    )
    click.echo(f"stability: rebuilding with seed {rb.cfg.seed} (the banks' settings{kept})", err=True)
    with tempfile.TemporaryDirectory(prefix="exdd-stability-") as tmp:
        try:
            res = run_build(
                dataset,
                tmp,
                model,
                info,
                rb.cfg,
                rb.synthetic_dirs,
                layout,
                bar,
                synthetic_limit=rb.synthetic_limit,
                projection=projection,
            )
        except (DatasetError, ValueError) as e:
            fail(f"--stability: {e}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scorer = Scorer(load_banks(tmp, expected_features=info))
    held = plan(dataset, rb.cfg, rb.synthetic_dirs, layout, rb.synthetic_limit).held
    return rb, scorer, held, res.manifest


@offline.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--synthetic",
    "synthetic_dirs",
    multiple=True,
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder(s) of synthetic defects from `exdd offline synth`.",
)
@click.option("--counts", default="0,50,100,150", show_default=True, help="Synthetic samples per point.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--weights", default="imagenet", show_default=True)
@click.option("--d", "d", default=defaults.D, show_default=True)
@click.option("--projection-seed", default=0, show_default=True)
@input_size_option
@click.option("--no-pixel", is_flag=True)
@click.option("--batch-size", default=defaults.BATCH_SIZE, show_default=True)
@click.option(
    "--raw-cache",
    "raw_cache",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Raw-feature cache folder(s) from scripts/studies/sweep_d.py (same weights and input size) to reuse.",
)
def sweep(
    dataset, synthetic_dirs, counts, out_dir, weights, d, projection_seed, input_size, no_pixel, batch_size, raw_cache
):
    """Banks and metrics for 0, 50, 100, 150 synthetic samples (the paper's Table 2 protocol)."""
    from .build import BuildConfig
    from .sweep import markdown, save
    from .sweep import sweep as run_sweep

    model, info = _extractor(weights, d, projection_seed, parse_hw(input_size))
    try:
        cs = [int(v) for v in counts.split(",")]
    except ValueError:
        fail(f"--counts {counts!r}: expected comma-separated integers")
    from .feature_cache import RawCache

    caches = [RawCache(c) for c in raw_cache]
    for c in caches:
        if c.weights_id != info["weights"]:
            fail(f"{c.folder}: cached with weights {c.weights_id}, not {info['weights']}")
    res = run_sweep(
        dataset,
        synthetic_dirs,
        cs,
        out_dir,
        model,
        info,
        BuildConfig(batch_size=batch_size),
        not no_pixel,
        log=lambda s: click.echo(s, err=True),
        raw_caches=caches,
    )
    paths = save(res, out_dir)
    click.echo(markdown(res))
    click.echo(f"written: {paths['json']} {paths['md']} {paths['png']}")


@offline.command()
@click.argument("bank_dir", metavar="BANKS", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="New bank directory to write.")
@click.option(
    "--normal",
    "normal_paths",
    multiple=True,
    type=click.Path(exists=True),
    help="Normal image or folder to teach (repeatable): its patches join the negative bank.",
)
@click.option(
    "--defect",
    "defect_paths",
    multiple=True,
    type=click.Path(exists=True),
    help="Defect image or folder (mask NNNNN_GT.png beside each; repeatable): defect patches join the positive bank.",
)
@click.option(
    "--from-results",
    "results",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Result file (JSONL/CSV of `exdd client score`) with an operator-verdict column.",
)
@click.option(
    "--verdict-column",
    default="verdict",
    show_default=True,
    help="Column of --from-results: ok/good/normal/false_alarm -> normal, defect/ng/bad -> defect, empty -> skip.",
)
@click.option(
    "--calibrate",
    "calibrate_ds",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Recalibrate the thresholds on this dataset's held-out training images (the parent's split); "
    "default: keep the parent's thresholds.",
)
@click.option(
    "--holdout",
    default=defaults.HOLDOUT,
    show_default=True,
    help="Held-out fraction the parent was built with (--calibrate).",
)
@click.option("--weights", default=None, help="Defaults to the weights the banks were built with.")
@click.option("--note", default="", help="Free text recorded in the manifest's update history.")
@click.option("--batch-size", default=defaults.BATCH_SIZE, show_default=True)
def update(
    bank_dir,
    out_dir,
    normal_paths,
    defect_paths,
    results,
    verdict_column,
    calibrate_ds,
    holdout,
    weights,
    note,
    batch_size,
):
    """Teach BANKS new normal / defect images incrementally; writes a new bank directory recording its parent."""
    from exdd.datasets import DatasetError
    from exdd.progress import bar
    from exdd_scoring import BankError, read_manifest
    from exdd_scoring.bank import check_features
    from exdd_scoring.provenance import OfflineManifest

    from .build import model_featurizer
    from .update import already_added, defect_samples, heldout_samples, normal_samples, verdict_samples
    from .update import update as run_update

    try:
        manifest = read_manifest(bank_dir, OfflineManifest)
        normals = normal_samples(normal_paths)
        defects, errors = defect_samples(defect_paths)
        if results:
            n2, d2, e2 = verdict_samples(results, verdict_column)
            normals, defects, errors = normals + n2, defects + d2, errors + e2
        calibration = heldout_samples(calibrate_ds, manifest, holdout) if calibrate_ds else None
    except (BankError, DatasetError) as e:
        fail(str(e))
    for p, why in errors:
        click.echo(f"error: {why}", err=True)
    seen = already_added(manifest)
    dup = [s.path for s in normals + defects if os.path.abspath(s.path) in seen]
    if dup:
        click.echo(f"note: {len(dup)} image(s) already taught in this lineage, skipped: {dup[:3]}", err=True)
    normals = [s for s in normals if os.path.abspath(s.path) not in seen]
    defects = [s for s in defects if os.path.abspath(s.path) not in seen]
    if not normals and not defects:
        fail("nothing to add: no readable new --normal / --defect image or verdict")
    feats = manifest.features
    model, info = _bank_extractor(bank_dir, manifest, weights)
    try:
        check_features(feats, info, bank_dir)
    except BankError as e:
        fail(str(e))
    try:
        res = run_update(
            bank_dir,
            out_dir,
            normals,
            defects,
            model_featurizer(model, info, batch_size),
            calibration,
            note=note,
            progress_factory=bar,
            input_errors=errors,
        )
    except (BankError, DatasetError, ValueError) as e:
        fail(str(e))
    m, rec = res.manifest, res.manifest.updates[-1]
    click.echo(f"banks: {out_dir}  (parent {bank_dir}, manifest sha256 {rec.parent.manifest_sha256[:12]}...)")
    for name in ("negative", "positive"):
        click.echo(f"{name}: {getattr(rec, name).size_before} -> {getattr(rec, name).size_after}")
    click.echo(
        f"added: {len(rec.added.normal)} normal, {len(rec.added.defect)} defect image(s); threshold {rec.threshold}"
    )
    for mode, v in m.thresholds.items():
        click.echo(f"threshold[{mode}]: {v:.6g}")
    click.echo("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in res.seconds.items()))
    if res.errors:
        click.echo(f"skipped files: {len(res.errors)} (listed in the manifest)", err=True)


from .synth_cli import synth as _synth  # noqa: E402 - registered once `offline` exists

offline.add_command(_synth)
