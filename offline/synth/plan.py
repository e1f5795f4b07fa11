"""The sample plan: which normal image, which defect mask, which prompt and which seed make sample i.

The plan is a pure function of (normals, masks, prompts, per_prompt, seed): sample ``i`` uses
prompt ``i // per_prompt`` and draws its normal image, its mask and its own seed from a random
generator seeded with ``(seed, i)`` alone, so a resumed job makes exactly the samples an
uninterrupted one would, whatever was done before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np


@dataclass(frozen=True)
class Source:
    """A defective training image and its (non-empty) mask."""

    image: str
    mask: str


@dataclass(frozen=True)
class SampleSpec:
    """What sample ``index`` is made of."""

    index: int
    normal: str
    source: Source
    prompt: str
    prompt_index: int
    seed: int


def sample_seed(plan_seed: int, index: int) -> np.random.Generator:
    """The random generator of sample ``index`` (depends only on the plan seed and the index)."""
    return np.random.default_rng(np.random.SeedSequence([int(plan_seed), int(index)]))


def make_plan(
    normals: Sequence[str], sources: Sequence[Source], prompts: Sequence[str], per_prompt: int, seed: int
) -> List[SampleSpec]:
    """The len(prompts) * per_prompt samples, prompt-major (NNNNN = prompt_index * per_prompt + k)."""
    if not normals:
        raise ValueError("no normal training images to inpaint onto")
    if not sources:
        raise ValueError("no defective training images with a non-empty mask")
    if not prompts:
        raise ValueError("no prompts")
    if per_prompt < 1:
        raise ValueError(f"per-prompt must be at least 1 (got {per_prompt})")
    plan = []
    for i in range(len(prompts) * per_prompt):
        rng = sample_seed(seed, i)
        n = int(rng.integers(len(normals)))
        m = int(rng.integers(len(sources)))
        s = int(rng.integers(2**31 - 1))
        p = i // per_prompt
        plan.append(SampleSpec(i, normals[n], sources[m], prompts[p], p, s))
    return plan
