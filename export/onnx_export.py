"""The feature extractor to ONNX (uint8 NHWC in, float32 features out), its fingerprint and parity check.

The exported graph holds everything from raw pixels to projected features: the uint8 -> float
cast, ImageNet normalisation, WideResNet50-2 to layer3, 3x3 aggregation, upsampling and the
projection. fp16 keeps the uint8 input and float32 output; the casts are inside the graph.
The features fingerprint (``build_extractor``'s dict) is stored in the model's metadata_props
under ``exdd.features`` so that banks made with other features can be refused (the keys, their
encoding and the reader are ``exdd_scoring.onnx_metadata``, shared with every reader).
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from exdd_scoring.onnx_metadata import metadata_entries

INPUT_NAME, OUTPUT_NAME = "IMAGE", "FEATURES"
OPSET = 17
# Parity: max |onnx - torch| / max |torch| over the check images (torch fp32 is the reference).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


class ExportError(RuntimeError):
    """An export or parity failure; the message says what and where."""


@dataclass
class Parity:
    """Outcome of comparing ONNX Runtime with torch on the same images."""

    precision: str
    images: int
    max_abs: float
    scale: float
    rel: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.rel)) and self.rel <= self.tolerance

    def describe(self) -> str:
        """One line for humans."""
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"parity {self.precision}: {verdict} on {self.images} images: max |onnx-torch| = {self.max_abs:.3g}, "
            f"feature scale max |torch| = {self.scale:.3g}, relative {self.rel:.2e} "
            f"(tolerance {self.tolerance:.0e})"
        )


def _wrapped(model: Any, precision: str) -> Any:
    """The module to trace: the extractor itself (fp32) or a half copy with a float32 output (fp16)."""
    import torch

    if precision == "fp32":
        return model
    if precision != "fp16":
        raise ExportError(f"precision {precision!r}: expected fp32 or fp16")

    class HalfExtractor(torch.nn.Module):
        """uint8 in, float16 inside, float32 out."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.inner(images).float()

    return HalfExtractor(copy.deepcopy(model).half().eval())


def export_onnx(model: Any, info: Dict[str, Any], out_path: str, precision: str = "fp32", opset: int = OPSET) -> str:
    """Write the extractor as ONNX with a dynamic batch axis and the features fingerprint; returns out_path."""
    import onnx
    import torch

    h, w = (int(v) for v in info["input_size"])
    module = _wrapped(model, precision).eval()
    example = torch.zeros((1, h, w, 3), dtype=torch.uint8)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                raw,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(raw)
    set_metadata(proto, metadata_entries(info, precision))
    onnx.checker.check_model(proto)
    onnx.save(proto, out_path)
    return out_path


def set_metadata(proto: Any, entries: Dict[str, str]) -> None:
    """Replace or add metadata_props entries of an ONNX ModelProto."""
    keep = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in entries.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v


def _is_image_file(name: str) -> bool:
    from exdd.images import is_image_name

    stem = os.path.splitext(os.path.basename(name))[0]
    return is_image_name(name) and not stem.endswith("_GT") and not stem.endswith("_mask")


def image_files(root: str, limit: int) -> List[str]:
    """Up to limit image files under root (recursively, sorted, masks excluded)."""
    found: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image_file(f))
    return found[:limit]


def load_images(paths: Sequence[str], size_hw: Tuple[int, int]) -> np.ndarray:
    """(n, H, W, 3) uint8 of the given files, resized to size_hw."""
    from exdd.images import read_image

    return np.stack([read_image(p, size_hw) for p in paths]).astype(np.uint8)


def generated_images(n: int, size_hw: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8 synthetic surfaces (every other one with a defect)."""
    from exdd.offline.surfaces import DEFECTS, SURFACES, add_defect, surface

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = surface(rng, SURFACES[i % len(SURFACES)], size_hw)
        if i % 2:
            img, _ = add_defect(rng, img, DEFECTS[i % len(DEFECTS)])
        out.append(np.repeat(img.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return np.stack(out)


def parity_images(source: Optional[str], n: int, size_hw: Tuple[int, int]) -> Tuple[np.ndarray, str]:
    """Check images from a folder/dataset (first n) or generated surfaces, and where they came from."""
    if source:
        paths = image_files(source, n)
        if not paths:
            raise ExportError(f"{source}: no image files found for the parity check")
        return load_images(paths, size_hw), f"{len(paths)} images of {source}"
    return generated_images(n, size_hw), f"{n} generated surfaces"


def onnx_session(onnx_path: str, providers: Optional[Sequence[str]] = None) -> Any:
    """An ONNX Runtime session (CPU unless providers say otherwise)."""
    import onnxruntime as ort

    return ort.InferenceSession(onnx_path, providers=list(providers or ["CPUExecutionProvider"]))


def parity(onnx_path: str, model: Any, images: np.ndarray, precision: str, batch: int = 2) -> Parity:
    """Compare ONNX Runtime with the torch fp32 extractor on images (uint8 NHWC)."""
    import torch

    sess = onnx_session(onnx_path)
    max_abs, scale = 0.0, 0.0
    for i in range(0, len(images), batch):
        x = np.ascontiguousarray(images[i : i + batch])
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        if got.shape != ref.shape or got.dtype != np.float32:
            raise ExportError(f"{onnx_path}: output {got.shape}/{got.dtype} differs from torch {ref.shape}/float32")
        diff = np.abs(got.astype(np.float64) - ref)
        max_abs = max(max_abs, float(np.nan_to_num(diff, nan=np.inf).max()))
        scale = max(scale, float(np.abs(ref).max()))
    rel = max_abs / scale if scale > 0 else float("inf")
    return Parity(precision, int(len(images)), max_abs, scale, rel, TOLERANCE[precision])
