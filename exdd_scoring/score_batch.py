"""ScoreBatch: what the scorer answers for a batch of images, a typed object instead of a dict indexed by strings.

Arrays are those of the scorer's device (numpy or cupy); per-mode mappings are keyed by registered mode names
(``scores.MODE_REGISTRY``). To add a per-image output, add a field with a default and fill it in
``Scorer.score``: ``images`` and ``to_host`` handle every array field (and mapping of arrays) without change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from .scores import Evidence


@dataclass(frozen=True)
class ScoreBatch:
    """The scores, per-patch distances and maps of B images."""

    scores: Mapping[str, Any]  # (B,) image score of each mode asked for, by mode name
    s_neg: Any  # (B,) the negative bank's reweighted score s-
    s_pos: Any  # (B,) the positive bank's reweighted score s+ (zeros without one)
    patch_neg: Any  # (B, h, w) each patch's distance a- to the negative bank
    patch_pos: Optional[Any] = None  # (B, h, w) each patch's distance a+ to the positive bank (None without one)
    maps: Mapping[str, Any] = field(default_factory=dict)  # (B, H, W) smoothed map of each mode of map_modes
    # issue 27 (answer.py): per mode asked for, the positive-bank row nearest to each image's peak patch (B,) (-1
    # without a positive bank); per mode of map_modes, the largest region above its pixel threshold: area (B,) and
    # box (B, 4) (host arrays, 0 without a pixel threshold)
    nearest_rows: Mapping[str, Any] = field(default_factory=dict)
    areas: Mapping[str, Any] = field(default_factory=dict)
    boxes: Mapping[str, Any] = field(default_factory=dict)
    evidence: Optional[Evidence] = field(default=None, compare=False, repr=False)  # the whole batch's (not split)

    def __len__(self) -> int:
        return int(self.s_neg.shape[0])

    def _map(self, fn: Callable[[Any], Any]) -> "ScoreBatch":
        """A copy with fn applied to every array (and every array of a mapping); evidence dropped."""

        def one(v: Any) -> Any:
            if v is None:
                return None
            if isinstance(v, Mapping):
                return {k: fn(a) for k, a in v.items()}
            return fn(v)

        return dataclasses.replace(
            self,
            evidence=None,
            **{f.name: one(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "evidence"},
        )

    def images(self, start: int, stop: int) -> "ScoreBatch":
        """Images start:stop of the batch (a request's share of a batched run)."""
        return self._map(lambda a: a[start:stop])

    def to_host(self, host: Callable[[Any], Any]) -> "ScoreBatch":
        """Every array through host (cupy.asnumpy on a GPU scorer, numpy.asarray on a CPU one)."""
        return self._map(host)
