"""Image reading and decoding for `exdd client score --ray`: Ray tasks, ahead of the senders.

The job's batches are read by Ray tasks spread over the cluster, up to ``window`` batches ahead
of the one being sent; the sending threads of ``run_job`` take each batch's decoded images from
the object store and talk to the Triton servers exactly as without Ray (same rows, same order,
same error rows: the tasks run the very same reader). A task that fails (a lost node) is read
again locally, with a warning.
"""

from __future__ import annotations

import sys
import threading
from typing import Dict, Optional, Sequence

from .score import Read, read_batch


def _read_task(paths: Sequence[str], hw) -> Read:
    return read_batch(paths, hw)


class RaySource:
    """``source(batches, hw)`` for ``JobConfig.source``: a reader fed by Ray tasks."""

    def __init__(self, ray, window: Optional[int] = None):
        from exdd.ray_cluster import cluster_cpus

        self.ray = ray
        self.cpus = cluster_cpus(ray)
        self.window = window or 2 * self.cpus
        self.remote = ray.remote(num_cpus=1, max_retries=2)(_read_task)
        self.tasks = 0  # batches read by Ray tasks (the rest, if any, were read locally)
        self.local = 0

    def __call__(self, batches: Sequence[Sequence[str]], hw) -> "RayReader":
        return RayReader(self, batches, hw)


class RayReader:
    """read(paths, hw) -> (images, errors) of one of the job's batches, prefetched by Ray tasks."""

    def __init__(self, source: RaySource, batches: Sequence[Sequence[str]], hw):
        self.src, self.hw = source, hw
        self.batches = [tuple(b) for b in batches]
        self.index = {b: k for k, b in enumerate(self.batches)}
        self.refs: Dict[int, object] = {}
        self.submitted = 0
        self.lock = threading.Lock()
        self._submit_upto(self.src.window)

    def _submit_upto(self, n: int) -> None:
        with self.lock:
            while self.submitted < min(n, len(self.batches)):
                k = self.submitted
                self.refs[k] = self.src.remote.remote(list(self.batches[k]), self.hw)
                self.submitted += 1
                self.src.tasks += 1

    def __call__(self, paths: Sequence[str], hw) -> Read:
        k = self.index.get(tuple(paths))
        if k is None or tuple(hw) != tuple(self.hw):  # not one of the job's batches: read here
            self.src.local += 1
            return read_batch(paths, hw)
        self._submit_upto(k + 1 + self.src.window)
        with self.lock:
            ref = self.refs.pop(k)
        try:
            return self.src.ray.get(ref)
        except Exception as e:  # a lost worker or node: the batch is read here instead
            print(
                f"warning: Ray task reading batch {k} failed ({type(e).__name__}); reading it locally", file=sys.stderr
            )
            self.src.local += 1
            return read_batch(paths, hw)
