"""Reduced-precision extractors: int8 by ONNX Runtime static quantization (QDQ, per-channel) calibrated on normal
images, and the parity check of any reduced-precision runner (int8, OpenVINO bf16) against torch fp32.

The fp32 export is pre-processed (shape inference + graph optimisation), then every Conv gets
per-channel int8 weights and uint8 activations (U8S8, the layout the AVX-512 VNNI kernels use),
with activation ranges calibrated (min/max) on normal training images. The uint8 -> float cast,
normalisation, pooling, upsampling and the projection stay float32. The result keeps the features
fingerprint and records ``exdd.precision = int8``.

Parity is measured, not assumed: features of the check images against torch fp32 (cosine per
patch), and with banks the image scores' rank correlation against fp32 features.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from exdd.metrics import spearman
from exdd_scoring.onnx_metadata import PRECISION_KEY

from .onnx_export import INPUT_NAME, ExportError, image_files, load_images, set_metadata

# Pass criteria of the int8 parity check.
MIN_COSINE = 0.98  # mean patch cosine similarity to torch fp32, worst image
MIN_RANK_CORRELATION = 0.99  # Spearman correlation of image scores vs fp32 (needs banks)


def calibration_files(source: str, n: int) -> List[str]:
    """Up to n normal training images of a dataset (KSDD2/MVTec layout), else the first n images of a folder."""
    from exdd.datasets import DatasetError, load_split

    try:
        normals = [s.path for s in load_split(source, "train") if s.label == 0]
    except (DatasetError, OSError, ValueError):
        normals = []
    if normals:
        step = max(1, len(normals) // n)  # spread over the set, not the first n only
        return normals[::step][:n]
    return image_files(source, n)


def quantize_int8(fp32_path: str, out_path: str, calibration: np.ndarray) -> str:
    """Static int8 QDQ quantization (per-channel Conv weights) of an exported fp32 extractor; returns out_path."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ExportError("int8: no calibration images")

    class Reader(CalibrationDataReader):
        """The calibration images, one uint8 NHWC image per call."""

        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            if self.i >= len(calibration):
                return None
            self.i += 1
            return {INPUT_NAME: np.ascontiguousarray(calibration[self.i - 1 : self.i])}

    reader = Reader()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out_path))) as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(fp32_path, pre, skip_symbolic_shape=False)
        q = os.path.join(tmp, "q.onnx")
        quantize_static(
            pre,
            q,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(q)
    src = onnx.load(fp32_path, load_external_data=False)
    meta = {p.key: p.value for p in src.metadata_props}
    meta[PRECISION_KEY] = "int8"
    set_metadata(proto, meta)
    onnx.save(proto, out_path)
    return out_path


@dataclass
class QuantParity:
    """A reduced-precision extractor vs fp32 on the same images: features, and image scores when banks are given."""

    images: int
    rel_max: float
    cosine_worst: float
    rank_correlation: Optional[float] = None
    score_rel_max: Optional[float] = None
    mode: Optional[str] = None
    precision: str = "int8"  # what was checked against fp32: int8 (ONNX Runtime) or bf16 (OpenVINO)

    @property
    def ok(self) -> bool:
        ok = bool(np.isfinite(self.cosine_worst)) and self.cosine_worst >= MIN_COSINE
        if self.rank_correlation is not None:
            ok = ok and self.rank_correlation >= MIN_RANK_CORRELATION
        return ok

    def describe(self) -> str:
        """One line for humans."""
        verdict = "ok" if self.ok else "FAILED"
        p = self.precision
        s = (
            f"parity {p}: {verdict} on {self.images} images: patch cosine to torch fp32 >= {self.cosine_worst:.4f} "
            f"(worst image mean; needs >= {MIN_COSINE}), max |{p}-fp32| / max |fp32| = {self.rel_max:.2e}"
        )
        if self.rank_correlation is not None:
            s += (
                f"; image scores ({self.mode}) vs fp32: rank correlation {self.rank_correlation:.4f} "
                f"(needs >= {MIN_RANK_CORRELATION}), max relative difference {self.score_rel_max:.2e}"
            )
        else:
            s += "; image-score rank correlation not measured (pass --banks)"
        return s


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows."""
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def quant_parity(
    int8_path: str, model: Any, images: np.ndarray, banks: Any = None, mode: Optional[str] = None
) -> QuantParity:
    """Compare the int8 ONNX (ONNX Runtime) with the torch fp32 extractor on images; score both with banks when
    given."""
    from exdd_scoring.runtimes import open_runtime

    return reduced_parity(open_runtime("onnxruntime", int8_path), "int8", model, images, banks, mode)


def reduced_parity(
    runner: Any, precision: str, model: Any, images: np.ndarray, banks: Any = None, mode: Optional[str] = None
) -> QuantParity:
    """Compare a runner of exdd_scoring.runtimes (e.g. int8 ONNX Runtime, bf16 OpenVINO) with the torch fp32
    extractor on images; score both with banks when given (rank correlation of the image scores)."""
    import torch

    got = np.concatenate([runner.run(np.ascontiguousarray(images[i : i + 4])) for i in range(0, len(images), 4)])
    with torch.no_grad():
        ref = np.concatenate(
            [model(torch.from_numpy(np.ascontiguousarray(images[i : i + 4]))).numpy() for i in range(0, len(images), 4)]
        )
    if got.shape != ref.shape:
        raise ExportError(f"{precision} extractor: output {got.shape} differs from torch {ref.shape}")
    d = ref.shape[-1]
    cos = cosine_rows(got.reshape(-1, d).astype(np.float64), ref.reshape(-1, d).astype(np.float64))
    cos_img = cos.reshape(len(images), -1).mean(axis=1)
    rel = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    res = QuantParity(int(len(images)), rel, float(np.nan_to_num(cos_img, nan=-1).min()), precision=precision)
    if banks is not None:
        from exdd_scoring import Scorer

        scorer = Scorer(banks)
        mode = mode or scorer.default_mode
        s_q = np.concatenate([scorer.score(got[i : i + 4], map_modes=()).scores[mode] for i in range(0, len(got), 4)])
        s_f = np.concatenate([scorer.score(ref[i : i + 4], map_modes=()).scores[mode] for i in range(0, len(ref), 4)])
        res.rank_correlation = spearman(s_q, s_f)
        res.score_rel_max = float(np.max(np.abs(s_q - s_f) / np.maximum(np.abs(s_f), 1e-12)))
        res.mode = mode
    return res


def calibration_images(source: str, n: int, size_hw: Tuple[int, int]) -> Tuple[np.ndarray, str]:
    """Calibration images (normal training images of a dataset, else a folder's first images) and their origin."""
    paths = calibration_files(source, n)
    if not paths:
        raise ExportError(f"{source}: no images found for int8 calibration")
    return load_images(paths, size_hw), f"{len(paths)} images of {source}"
