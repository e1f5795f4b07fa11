"""`exdd client stream`: frames from a folder, a video file or a camera, a bounded number in flight."""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Dict, Iterator, Optional, Tuple

import numpy as np

from exdd.images import ImageReadError, read_image, resize_rgb

from .connection import LINE_OUTPUTS, Connection, ModelInfo, line_fields
from .sources import expand


def frames(source: str, hw: Tuple[int, int]) -> Iterator[Tuple[str, Optional[np.ndarray], Optional[str]]]:
    """(frame id, uint8 RGB frame resized to hw or None, error) from a folder, a video file or a camera index."""
    if os.path.isdir(source):
        for p in expand([source]):
            try:
                yield p, read_image(p, hw), None
            except ImageReadError as e:
                yield p, None, str(e)
        return
    import cv2

    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise ValueError(f"{source}: cannot open as a video file or camera index")
    try:
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield f"{source}#{i}", resize_rgb(rgb, hw), None  # the same resize as files (exdd.images)
            i += 1
    finally:
        cap.release()


def stream(
    source: str,
    conn_factory: Callable[[], Connection],
    info: ModelInfo,
    max_in_flight: int,
    on_result: Callable[[Dict], None],
    threshold: Optional[float] = None,
    max_frames: Optional[int] = None,
) -> Dict[str, float]:
    """Send frames one per request with at most max_in_flight outstanding; on_result gets each answer in order."""
    import threading

    local = threading.local()

    def infer(frame: np.ndarray) -> Tuple[Dict, float]:
        c = getattr(local, "c", None) or conn_factory()
        local.c = c
        t = time.perf_counter()
        out = c.infer(frame[None], threshold, line=[n for n in LINE_OUTPUTS if n in info.outputs])
        return out, (time.perf_counter() - t) * 1000

    lat = []
    q: Deque[Tuple[str, Future]] = deque()
    n = 0
    t0 = time.perf_counter()

    def drain_one() -> None:
        fid, fut = q.popleft()
        try:
            out, ms = fut.result()
            lat.append(ms)
            on_result(
                {
                    "frame": fid,
                    "score": float(out["SCORE"].reshape(-1)[0]),
                    "is_defect": bool(out["IS_DEFECT"].reshape(-1)[0]),
                    "latency_ms": round(ms, 2),
                    **line_fields(out, 0),
                }
            )
        except Exception as e:
            on_result({"frame": fid, "error": str(e)})

    with ThreadPoolExecutor(max_in_flight) as ex:
        try:
            for fid, frame, err in frames(source, info.input_hw):
                if max_frames is not None and n >= max_frames:
                    break
                n += 1
                if frame is None:
                    on_result({"frame": fid, "error": err})
                    continue
                while len(q) >= max_in_flight:
                    drain_one()
                q.append((fid, ex.submit(infer, frame)))
            while q:
                drain_one()
        except KeyboardInterrupt:
            while q:
                drain_one()
    secs = time.perf_counter() - t0
    return {
        "frames": n,
        "seconds": secs,
        "fps": n / secs if secs > 0 else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
        "p95_ms": float(np.percentile(lat, 95)) if lat else float("nan"),
    }
