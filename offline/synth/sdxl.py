"""SDXL inpainting through diffusers' StableDiffusionXLInpaintPipeline, with the paper's settings.

The normal image and the inpainting mask are resized to ``work_size`` x ``work_size``
(bicubic / nearest), inpainted with ``padding_mask_crop`` (the pipeline crops around the
mask, inpaints the crop at full resolution and pastes only the masked pixels back), and the
result is resized (bicubic) back to the normal image's size.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

import numpy as np
from PIL import Image

DEFAULT_MODEL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
DEFAULT_PROMPTS = ("white marks on the wall", "copper metal scratches")
DEFAULT_NEGATIVE = "smooth, plain, black, dark, shadow"


class SynthError(RuntimeError):
    """A synthesis failure with a message for the user (no traceback)."""


@dataclass(frozen=True)
class SDXLSettings:
    """The inpainting settings (defaults: the paper's)."""

    steps: int = 30
    guidance: float = 20.0
    strength: float = 0.99
    padding_mask_crop: int = 2
    work_size: int = 1024

    def describe(self) -> Dict[str, Any]:
        """The settings as a dict, for the sidecar."""
        return asdict(self)


def resolve_device(device: str) -> Tuple[str, str]:
    """(device, dtype name) for 'auto' | 'cpu' | 'cuda': fp16 on a GPU, fp32 on the CPU."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SynthError("--device cuda: no CUDA GPU is available (use --device auto or cpu)")
    if device not in ("cpu", "cuda"):
        raise SynthError(f"unknown device {device!r} (auto, cpu, cuda)")
    return device, ("float16" if device == "cuda" else "float32")


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:400] + " ...") if len(text) > 400 else (text or type(e).__name__)


def load_pipeline(model: str, device: str, dtype: str):
    """The StableDiffusionXLInpaintPipeline of a model id or local folder, on device, in dtype (safetensors only)."""
    try:
        import torch
        from diffusers import StableDiffusionXLInpaintPipeline
    except ImportError as e:
        raise SynthError(
            f"SDXL synthesis needs diffusers and transformers ({_short(e)}); "
            f"install them with: pip install 'exdd[synth]'"
        ) from None
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()  # per-call dtype notes and loading bars would drown the progress output
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    torch_dtype = getattr(torch, dtype)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    kw = dict(torch_dtype=torch_dtype, use_safetensors=True)
    attempts = ([dict(variant="fp16")] if dtype == "float16" else []) + [{}]
    err: BaseException | None = None
    for extra in attempts:
        try:
            with warnings.catch_warnings():  # newer diffusers rename torch_dtype to dtype; older lack dtype
                warnings.simplefilter("ignore", FutureWarning)
                pipe = StableDiffusionXLInpaintPipeline.from_pretrained(model, **kw, **extra)
            break
        except Exception as e:  # any loading failure is reported with the model's name
            err = e
    else:
        assert err is not None  # every attempt failed (there is at least one)
        where = "local folder" if os.path.isdir(model) else "model id or path"
        raise SynthError(f"cannot load the SDXL inpainting model {model!r} ({where}): {_short(err)}")
    try:
        pipe = pipe.to(device)
    except Exception as e:
        raise SynthError(f"cannot move the SDXL inpainting model {model!r} to {device}: {_short(e)}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inpaint(
    pipe, image: np.ndarray, mask: np.ndarray, prompt: str, negative_prompt: str, settings: SDXLSettings, seed: int
) -> np.ndarray:
    """uint8 RGB (H, W, 3): image with the bool mask region inpainted from prompt, at image's size."""
    import torch

    h, w = image.shape[:2]
    ws = settings.work_size
    init = Image.fromarray(image).resize((ws, ws), Image.Resampling.BICUBIC)
    m = Image.fromarray((mask.astype(bool) * 255).astype(np.uint8)).resize((ws, ws), Image.Resampling.NEAREST)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.inference_mode():
        out = pipe(
            prompt=prompt,
            negative_prompt=negative_prompt,
            image=init,
            mask_image=m,
            height=ws,
            width=ws,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            strength=settings.strength,
            padding_mask_crop=settings.padding_mask_crop,
            generator=gen,
            output_type="pil",
        ).images[0]
    out = out.convert("RGB")
    if out.size != (w, h):
        out = out.resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.uint8)
