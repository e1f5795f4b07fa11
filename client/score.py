"""`exdd client score`: a resumable batch job over image files through one or more servers.

Batches of images go to the servers with a bounded number in flight (``concurrency`` per
server); rows are written in input order as soon as their turn comes. Unreadable files become
error rows; an unreachable server is retried with backoff (on every server given), then the job
stops with a clear error and the rows written so far stay valid, so a rerun resumes it.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from exdd.images import ImageReadError, image_size, input_warning, read_model_input
from exdd.log import get as _logger
from exdd_scoring.picture import decode_rgb, resize_rgb
from exdd_scoring.regions import box_in_image

from .connection import (
    IMAGE_HW,
    LINE_OUTPUTS,
    MODEL,
    SCORER,
    Connection,
    ModelInfo,
    RequestRejected,
    ServerUnavailable,
    line_fields,
    with_retries,
)
from .heatmaps import write_heatmap
from .results import ResultWriter, row_key

log = _logger(__name__)


@dataclass
class JobConfig:
    urls: Sequence[str]
    protocol: str = "grpc"
    batch_size: int = 8
    concurrency: int = 2
    retries: int = 5
    backoff_s: float = 0.5
    threshold: Optional[float] = None
    heatmaps: Optional[str] = None
    timeout_s: float = 120.0
    # source(batches, input_hw) -> read(paths, input_hw): where images are read and decoded (None: here, by
    # the sending threads; client/ray_source.py: by Ray tasks ahead of the senders)
    source: Optional[Callable] = None
    model: str = MODEL  # the product's ensemble and scorer (exdd_scoring.model_names.ProductModels)
    scorer: str = SCORER
    # what is sent: "array", the files decoded and resized here (input IMAGE at the model-input size), or
    # "bytes", the files as they are (input IMAGE_BYTES; the server decodes and resizes with the same functions)
    send: str = "array"
    min_area: Optional[int] = None  # overrides the served minimum defect area (pixels; issue 27)


SENDS = ("array", "bytes")


@dataclass
class JobSummary:
    total: int = 0
    skipped: int = 0
    scored: int = 0
    failed: int = 0
    warned: int = 0  # scored rows whose warning says the score is not to be trusted
    seconds: float = 0.0
    stopped: Optional[str] = None
    per_server: Dict[str, int] = field(default_factory=dict)
    verdicts: Dict[str, int] = field(default_factory=dict)  # rows scored this run per verdict (issue 27)


class _Pool:
    """Connections per worker thread, each bound to one server URL (round-robin over the URLs)."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.local = threading.local()
        self.urls = itertools.cycle(list(cfg.urls))
        self.lock = threading.Lock()

    def conn(self, shift: int = 0) -> Connection:
        """This thread's connection; shift > 0 moves the thread to the next server (failover)."""
        c = getattr(self.local, "conn", None)
        if c is None or shift:
            if c is not None:
                c.close()
            with self.lock:
                url = next(self.urls)
            cfg = self.cfg
            c = self.local.conn = Connection(url, cfg.protocol, cfg.model, cfg.timeout_s, cfg.scorer)
        return c


Read = Tuple[List[Optional[Union[np.ndarray, bytes]]], List[Optional[str]], List[Optional[str]]]


def read_batch(paths: Sequence[str], hw) -> Read:
    """(images resized to hw, errors, input warnings), one each per path; an unreadable file is an error."""
    imgs: List[Optional[Union[np.ndarray, bytes]]] = []
    errs: List[Optional[str]] = []
    warns: List[Optional[str]] = []
    for p in paths:
        img, err, warning = None, None, None
        try:
            img, warning = read_model_input(p, hw)
        except ImageReadError as e:
            err = str(e)
        except OSError as e:
            err = f"{p}: unreadable ({e})"
        imgs.append(img)
        errs.append(err)
        warns.append(None if warning is None else f"{p}: {warning}")
    return imgs, errs, warns


def read_encoded(paths: Sequence[str], hw) -> Read:
    """(the files' bytes, errors, no warnings yet), one each per path: the server decodes and resizes them, and the
    warning comes from the picture size it answers (IMAGE_HW)."""
    blobs: List[Optional[Union[np.ndarray, bytes]]] = []
    errs: List[Optional[str]] = []
    for p in paths:
        blob, err = None, None
        try:
            with open(p, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            err = f"{p}: no such file"
        except IsADirectoryError:
            err = f"{p}: is a directory"
        except OSError as e:
            err = f"{p}: unreadable ({e})"
        blobs.append(blob)
        errs.append(err)
    return blobs, errs, [None] * len(paths)


def _rejected(row: Dict, path: str, e: RequestRejected) -> None:
    """A row the server answered with an error: a bad file (invalid input) or a server-side failure (transient)."""
    row["error"] = f"{path}: server rejected the request ({e})"
    row["error_kind"] = "input" if e.bad_input else "server"


def _run_batch(pool: _Pool, info: ModelInfo, cfg: JobConfig, paths: Sequence[str], read=read_batch) -> List[Dict]:
    """Rows for one batch of paths (in order); raises ServerUnavailable after the retries."""
    encoded = cfg.send == "bytes"
    imgs, errs, warns = read(paths, info.input_hw)
    good = [i for i, im in enumerate(imgs) if im is not None]
    rows = [
        {"path": p, "error": e, "warning": w, "error_kind": None if e is None else "input"}
        for p, e, w in zip(paths, errs, warns)
    ]
    if not good:
        return rows
    thr = cfg.threshold if cfg.threshold is not None else info.threshold
    used = {}

    def send(idx: List[int]):
        batch = [imgs[i] for i in idx] if encoded else np.stack([imgs[i] for i in idx])

        def attempt(i: int):
            c = pool.conn(shift=1 if i else 0)
            used["url"] = c.url
            t = time.perf_counter()
            out = c.infer(
                batch,
                cfg.threshold,
                with_map=cfg.heatmaps is not None,
                line=[n for n in LINE_OUTPUTS if n in info.outputs],
                min_area=cfg.min_area,
            )
            return out, (time.perf_counter() - t) * 1000.0

        return with_retries(
            attempt, cfg.retries, cfg.backoff_s, on_retry=lambda e, d: log.warning("%s; retrying in %.1fs", e, d)
        )

    answered = []
    try:
        answered.append((good, *send(good)))
    except RequestRejected as e:
        if not (encoded and len(good) > 1):
            for i in good:
                _rejected(rows[i], paths[i], e)
            return rows
        for i in good:  # one undecodable file fails its whole request: resend one by one, so only it fails
            try:
                answered.append(([i], *send([i])))
            except RequestRejected as e1:
                _rejected(rows[i], paths[i], e1)
    for idx, out, ms in answered:
        for j, i in enumerate(idx):
            r = rows[i]
            r.update(
                score=float(out["SCORE"][j].reshape(-1)[0]),
                is_defect=bool(out["IS_DEFECT"][j].reshape(-1)[0]),
                score_neg=float(out["SCORE_NEG"][j].reshape(-1)[0]),
                score_pos=float(out["SCORE_POS"][j].reshape(-1)[0]),
                threshold=thr,
                mode=info.mode,
                latency_ms=round(ms, 2),
                server=used.get("url"),
                **line_fields(out, j),
            )
            if encoded:
                got_h, got_w = (int(v) for v in out[IMAGE_HW][j].reshape(-1)[:2])
                warning = input_warning((got_h, got_w), info.input_hw)
                r["warning"] = None if warning is None else f"{paths[i]}: {warning}"
            if r.get("box"):  # the served box is in the model input's pixels: the row's in the image's own
                sent = out[IMAGE_HW][j].reshape(-1) if encoded else None
                hw = (int(sent[0]), int(sent[1])) if sent is not None else image_size(paths[i])
                r["box"] = list(box_in_image(r["box"], info.input_hw, hw))
            if cfg.heatmaps is not None:
                # an encoded file's overlay: decoded here exactly as the server decoded it (it did, so it can)
                image = resize_rgb(decode_rgb(imgs[i], paths[i]), info.input_hw) if encoded else imgs[i]
                r["heatmap"] = write_heatmap(cfg.heatmaps, paths[i], image, out["ANOMALY_MAP"][j], thr)
    return rows


def model_info(cfg: JobConfig) -> ModelInfo:
    """The served model's info from the first reachable server (with retries)."""

    def attempt(i: int):
        return Connection(cfg.urls[i % len(cfg.urls)], cfg.protocol, cfg.model, cfg.timeout_s, cfg.scorer).info()

    return with_retries(attempt, max(cfg.retries, len(cfg.urls)), cfg.backoff_s)


def run_job(
    paths: Sequence[str], writer: ResultWriter, cfg: JobConfig, progress: Optional[Callable[[int], None]] = None
) -> JobSummary:
    """Score every path not already in the writer (matched and written by their resolved form, row_key); rows
    written in input order."""
    t0 = time.time()
    paths = list(dict.fromkeys(row_key(p) for p in paths))  # one row per image, however it was named
    todo = [p for p in paths if p not in writer.done]
    summary = JobSummary(total=len(paths), skipped=len(paths) - len(todo))
    if not todo:
        return summary
    info = model_info(cfg)
    bs = max(1, min(cfg.batch_size, info.max_batch or cfg.batch_size))
    batches = [todo[i : i + bs] for i in range(0, len(todo), bs)]
    workers = max(1, cfg.concurrency * len(cfg.urls))
    pool = _Pool(cfg)
    if cfg.send not in SENDS:
        raise ValueError(f"send {cfg.send!r}: expected one of {SENDS}")
    read = read_encoded if cfg.send == "bytes" else cfg.source(batches, info.input_hw) if cfg.source else read_batch
    done: Dict[int, List[Dict]] = {}
    next_write = 0
    pending: Dict[Future, int] = {}
    it = iter(enumerate(batches))
    stop: Optional[BaseException] = None
    with ThreadPoolExecutor(workers) as ex:

        def fill():
            while stop is None and len(pending) < 2 * workers:
                try:
                    k, b = next(it)
                except StopIteration:
                    return
                pending[ex.submit(_run_batch, pool, info, cfg, b, read)] = k

        fill()
        try:
            while pending:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    k = pending.pop(fut)
                    try:
                        done[k] = fut.result()
                    except ServerUnavailable as e:
                        stop = stop or e
                while next_write in done:
                    for row in done.pop(next_write):
                        server = row.pop("server", None)
                        if server:
                            summary.per_server[server] = summary.per_server.get(server, 0) + 1
                        writer.write(row)
                        if row.get("verdict"):
                            summary.verdicts[row["verdict"]] = summary.verdicts.get(row["verdict"], 0) + 1
                        summary.scored += row.get("error") is None
                        summary.failed += row.get("error") is not None
                        summary.warned += row.get("error") is None and row.get("warning") is not None
                    if progress:
                        progress(len(batches[next_write]))
                    next_write += 1
                fill()
        except KeyboardInterrupt:
            stop = KeyboardInterrupt("interrupted")
            for f in pending:
                f.cancel()
    summary.seconds = time.time() - t0
    if stop is not None:
        summary.stopped = str(stop) or type(stop).__name__
    return summary
