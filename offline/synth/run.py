"""The resumable synthesis loop: plan, skip the samples already done, make and write the rest.

A sample is done when its sidecar exists (written last, atomically). Before anything is made,
every existing sidecar of the plan is checked against the plan: a folder made with other
arguments is refused rather than silently mixed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from exdd import __version__
from exdd.datasets import load_split
from exdd.images import ImageReadError, image_size, read_image, read_mask
from exdd.progress import Progress

from . import writer
from .diffmask import DiffMaskRule
from .methods import SYNTH_METHODS, SynthMethod
from .plan import SampleSpec, Source, make_plan
from .sdxl import SDXLSettings, SynthError

# sidecar fields that must equal the plan's for an existing sample to count as done
PLAN_KEYS = ("method", "model", "prompt", "negative_prompt", "seed", "source_normal", "source_mask", "settings")


@dataclass
class SynthConfig:
    """Everything that defines a synthesis job."""

    dataset: str
    out_dir: str
    method: str = "sdxl"
    model: str = ""
    prompts: Sequence[str] = ()
    negative_prompt: str = ""
    per_prompt: int = 50
    seed: int = 0
    sdxl: SDXLSettings = field(default_factory=SDXLSettings)
    rule: DiffMaskRule = field(default_factory=DiffMaskRule)
    limit: Optional[int] = None


@dataclass
class SynthResult:
    """What a run did."""

    planned: int
    made: int
    skipped: int
    empty: int
    seconds: float


def dataset_sources(dataset: str) -> Tuple[List[str], List[Source]]:
    """(normal train images, defective train images with their masks), sorted by path."""
    train = load_split(dataset, "train")
    normals = sorted(s.path for s in train if s.label == 0)
    sources = sorted((Source(s.path, s.mask) for s in train if s.label == 1 and s.mask), key=lambda s: s.image)
    if not normals:
        raise SynthError(f"{dataset}: no normal training image to inpaint onto")
    if not sources:
        raise SynthError(
            f"{dataset}: no defective training image with a non-empty mask (synthesis "
            f"reuses the real defect masks of the training set)"
        )
    return normals, sources


def method_of(cfg: "SynthConfig") -> SynthMethod:
    """The registered synthesis method of cfg; SynthError names an unknown one."""
    if cfg.method not in SYNTH_METHODS:
        raise SynthError(f"synthesis method {cfg.method!r}: expected one of {tuple(SYNTH_METHODS)}")
    return SYNTH_METHODS[cfg.method]


def _rel(path: str, root: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root))


def settings_of(cfg: SynthConfig, device: str, dtype: str) -> Dict[str, Any]:
    """The settings block of the sidecar (everything that shapes a sample's pixels)."""
    if method_of(cfg).uses_pipeline:
        return {
            **cfg.sdxl.describe(),
            "dtype": dtype,
            "plan_seed": cfg.seed,
            "per_prompt": cfg.per_prompt,
            "prompts": list(cfg.prompts),
        }
    return {"plan_seed": cfg.seed, "per_prompt": cfg.per_prompt, "prompts": list(cfg.prompts)}


def planned_sidecar(cfg: SynthConfig, spec: SampleSpec, settings: Dict[str, Any]) -> Dict[str, Any]:
    """The plan-defined part of sample spec's sidecar."""
    sdxl = method_of(cfg).uses_pipeline
    return {
        "method": cfg.method,
        "model": cfg.model if sdxl else None,
        "prompt": spec.prompt if sdxl else None,
        "negative_prompt": cfg.negative_prompt if sdxl else None,
        "seed": spec.seed,
        "source_normal": _rel(spec.normal, cfg.dataset),
        "source_mask": _rel(spec.source.mask, cfg.dataset),
        "settings": settings,
    }


def check_existing(cfg: SynthConfig, plan: List[SampleSpec], settings: Dict[str, Any]) -> List[bool]:
    """Which samples are done; raises SynthError when a done sample was made with other arguments."""
    done = []
    for spec in plan:
        side = writer.read_sidecar(cfg.out_dir, spec.index)
        if side is not None:
            want = planned_sidecar(cfg, spec, settings)
            for k in PLAN_KEYS:
                if side.get(k) != want[k]:
                    raise SynthError(
                        f"{writer.paths(cfg.out_dir, spec.index)['sidecar']}: made with other "
                        f"arguments ({k}: {side.get(k)!r}, now {want[k]!r}); rerun with the same "
                        f"arguments to resume, or write to another --out folder"
                    )
        done.append(side is not None)
    return done


def _load(spec: SampleSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Tuple[int, int]]:
    """(normal RGB, mask resized to the normal's size, the mask at its own size, the defect image's (h, w))."""
    normal = read_image(spec.normal)
    hw = image_size(spec.source.image)
    mask_own = read_mask(spec.source.mask, expect_hw=hw)
    mask = read_mask(spec.source.mask, expect_hw=hw, size_hw=normal.shape[:2])
    return normal, mask, mask_own, hw


def is_gray(rgb: np.ndarray) -> bool:
    """Whether an RGB image has equal channels everywhere (a grayscale source)."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def make_sample(cfg: SynthConfig, spec: SampleSpec, pipe, settings: Dict[str, Any], device: str) -> Dict[str, Any]:
    """Make and write one sample; returns its sidecar."""
    t0 = time.time()
    try:
        normal, mask, mask_own, _ = _load(spec)
        generated, positive, extra = method_of(cfg).make(cfg, spec, pipe, normal, mask, mask_own)
    except ImageReadError as e:
        raise SynthError(f"sample {spec.index}: {e}") from None
    except ValueError as e:
        raise SynthError(f"sample {spec.index} ({spec.normal}, {spec.source.mask}): {e}") from None
    gray = is_gray(normal)
    image = generated.mean(axis=2).round().astype(np.uint8) if gray else generated
    p = writer.paths(cfg.out_dir, spec.index)
    sidecar = {
        "index": spec.index,
        "image": os.path.basename(p["image"]),
        "mask": os.path.basename(p["mask"]),
        **planned_sidecar(cfg, spec, settings),
        "prompt_index": spec.prompt_index if method_of(cfg).uses_pipeline else None,
        "source_defect_image": _rel(spec.source.image, cfg.dataset),
        "dataset": os.path.abspath(cfg.dataset),
        "size_hw": list(normal.shape[:2]),
        "grayscale": gray,
        "device": device,
        "positive_pixels": int(positive.sum()),
        "empty": not bool(positive.any()),
        **extra,
        "exdd_version": __version__,
        "seconds": round(time.time() - t0, 3),
    }
    writer.write_sample(cfg.out_dir, spec.index, image, positive, sidecar)
    return sidecar


def synthesize(
    cfg: SynthConfig,
    device: str = "cpu",
    dtype: str = "float32",
    load_pipe: Optional[Callable[[], Any]] = None,
    note: Callable[[str], None] = print,
) -> SynthResult:
    """Run (or resume) a synthesis job; load_pipe is called only if an SDXL sample is left to make."""
    t0 = time.time()
    normals, sources = dataset_sources(cfg.dataset)
    try:
        plan = make_plan(normals, sources, list(cfg.prompts), cfg.per_prompt, cfg.seed)
    except ValueError as e:
        raise SynthError(str(e)) from None
    os.makedirs(cfg.out_dir, exist_ok=True)
    settings = settings_of(cfg, device, dtype)
    done = check_existing(cfg, plan, settings)
    todo = [s for s, d in zip(plan, done) if not d]
    if cfg.limit is not None:
        todo = todo[: max(0, cfg.limit)]
    beyond = sum(
        1 for f in os.listdir(cfg.out_dir) if f.endswith(".json") and f[:-5].isdigit() and int(f[:-5]) >= len(plan)
    )
    note(
        f"plan: {len(plan)} samples ({len(normals)} normal images, {len(sources)} defect masks); "
        f"done: {sum(done)}, to make now: {len(todo)}"
        + (f"; {beyond} samples beyond the plan left in place" if beyond else "")
    )
    pipe = load_pipe() if (todo and method_of(cfg).uses_pipeline and load_pipe is not None) else None
    prog = Progress("synth", len(plan), "sample", initial=sum(done), every=10.0)
    empty = 0
    try:
        for spec in todo:
            side = make_sample(cfg, spec, pipe, settings, device)
            empty += int(side["empty"])
            prog.update()
    finally:
        prog.close()
    return SynthResult(len(plan), len(todo), sum(done), empty, time.time() - t0)
