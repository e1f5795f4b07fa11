"""`exdd client evaluate`: the offline metrics computed from a server's answers on a labelled dataset."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence

import numpy as np

from exdd.datasets import Sample
from exdd.images import ImageReadError, image_size, read_image, read_mask
from exdd.metrics import summary
from exdd.results import ErrorRow, EvaluationResults, ImageResult
from exdd_scoring.regions import box_in_image

from .connection import LINE_OUTPUTS, Connection, ModelInfo, line_fields, with_retries


def evaluate(
    samples: Sequence[Sample],
    conn_factory: Callable[[], Connection],
    info: ModelInfo,
    batch: int,
    concurrency: int,
    retries: int = 5,
    with_pixel: bool = True,
    progress: Optional[Callable[[int], None]] = None,
) -> EvaluationResults:
    """Scores (and maps) of every readable sample from the server; metrics of the served mode."""
    local = threading.local()
    hw = info.input_hw

    def run(chunk: Sequence[Sample]):
        imgs, masks, kept, errs = [], [], [], []
        for s in chunk:
            try:  # read both first: a sample is kept (image, mask and label together) or is an error row
                img = read_image(s.path, hw)
                mask = read_mask(s.mask, image_size(s.path), hw) if s.mask else np.zeros(hw, bool)
            except ImageReadError as e:
                errs.append((s.path, str(e)))
                continue
            imgs.append(img)
            masks.append(mask)
            kept.append(s)
        if not kept:
            if progress:
                progress(len(chunk))
            return kept, None, masks, errs

        def attempt(i: int):
            if i or getattr(local, "c", None) is None:
                local.c = conn_factory()
            return local.c.infer(
                np.stack(imgs), with_map=with_pixel, line=[n for n in LINE_OUTPUTS if n in info.outputs]
            )

        out = with_retries(attempt, retries, 0.5)
        if progress:
            progress(len(chunk))
        return kept, out, masks, errs

    chunks = [samples[i : i + batch] for i in range(0, len(samples), batch)]
    kept: List[Sample] = []
    scores, s_neg, s_pos, maps, masks, errors, line = [], [], [], [], [], [], []
    with ThreadPoolExecutor(concurrency) as ex:
        for k, out, m, errs in ex.map(run, chunks):
            errors += errs
            if out is None:
                continue
            kept += k
            scores.append(out["SCORE"].reshape(-1))
            s_neg.append(out["SCORE_NEG"].reshape(-1))
            s_pos.append(out["SCORE_POS"].reshape(-1))
            for j, smp in enumerate(k):  # issue 27: the answer's line fields, the box in image pixels
                row = line_fields(out, j)
                if row.get("box"):
                    row["box"] = list(box_in_image(row["box"], hw, image_size(smp.path)))
                line.append(row)
            if with_pixel:
                maps.append(out["ANOMALY_MAP"].astype(np.float32))
                masks += m
    labels = np.array([s.label for s in kept])
    sc = np.concatenate(scores) if scores else np.zeros(0)
    sn = np.concatenate(s_neg) if s_neg else np.zeros(0)
    sp = np.concatenate(s_pos) if s_pos else np.zeros(0)
    mp = np.concatenate(maps).astype(np.float32) if maps else None
    mk = np.stack(masks) if masks else None
    met = summary(sc, labels, mp if with_pixel and mk is not None and mk.any() else None, mk)
    return EvaluationResults(
        metrics={info.mode: met},
        default_mode=info.mode,
        thresholds={info.mode: info.threshold} if info.threshold is not None else {},
        images=[
            ImageResult(s.path, int(s.label), {info.mode: float(sc[i])}, s.kind, float(sn[i]), float(sp[i]), **line[i])
            for i, s in enumerate(kept)
        ],
        errors=[ErrorRow(p, e) for p, e in errors],
        weights=info.features.weights if info.features else None,
        extra={"review_band": dict(info.review_band)} if info.review_band else {},
    )
