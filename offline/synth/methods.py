"""The synthesis methods: one registry, `exdd offline synth --method` choices come from it.

A method turns (normal image, inpainting mask, the real defect's own mask) into a generated image
and its positive (defect) mask. Adding one is a ``register(SynthMethod(...))`` here plus its test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import numpy as np

from exdd.registry import register_unique

# make(cfg, spec, pipe, normal, mask, mask_own) -> (generated RGB, positive mask, extra sidecar fields)
MakeFn = Callable[[Any, Any, Any, np.ndarray, np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray, Dict[str, Any]]]


@dataclass(frozen=True)
class SynthMethod:
    """One way of making a synthetic defect."""

    name: str
    make: MakeFn
    uses_pipeline: bool = False  # a diffusion pipeline (model, prompts, SDXL settings shape the pixels)
    help: str = ""


SYNTH_METHODS: Dict[str, SynthMethod] = {}


def register(m: SynthMethod) -> SynthMethod:
    """Add a method (names are unique)."""
    return register_unique(SYNTH_METHODS, m, "synthesis method")


def _sdxl(cfg, spec, pipe, normal, mask, mask_own):
    from .diffmask import diff_mask
    from .sdxl import SynthError, inpaint

    try:
        generated = inpaint(pipe, normal, mask, spec.prompt, cfg.negative_prompt, cfg.sdxl, spec.seed)
    except Exception as e:  # e.g. out of GPU memory: reported with the sample, no traceback
        raise SynthError(
            f"sample {spec.index}: SDXL inpainting failed ({cfg.model}): "
            f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
        ) from None
    positive = diff_mask(normal, generated, mask, cfg.rule)
    return generated, positive, {"positive_mask": cfg.rule.describe(), "inpaint_mask_pixels": int(mask.sum())}


def _paste(cfg, spec, pipe, normal, mask, mask_own):
    from exdd.images import read_image

    from .paste import paste_defect
    from .plan import sample_seed

    defect = read_image(spec.source.image)
    generated, positive, info = paste_defect(normal, defect, mask_own, sample_seed(spec.seed, 0))
    return (
        generated,
        positive,
        {
            "positive_mask": {
                "rule": "the pasted defect mask (the real mask, transformed and placed as the defect was)"
            },
            "paste": info,
        },
    )


register(SynthMethod("sdxl", _sdxl, uses_pipeline=True, help="SDXL inpainting (the paper)"))
register(SynthMethod("paste", _paste, help="Poisson-blended real defects (CPU)"))
