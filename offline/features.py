"""The feature extractor: the torch module that is exported to ONNX.

uint8 (B, H, W, 3) RGB -> ImageNet normalisation -> WideResNet50-2 layer2 + layer3 ->
3x3 local average (stride 1) -> layer3 bilinearly upsampled to layer2's grid -> concatenation
(1536 channels) -> fixed projection to d -> float32 (B, H/8, W/8, d). The projection is a seeded random
Gaussian matrix (kind 'random') or one fitted on the normal training patches at build time (kind 'pca',
offline/projection.py, stored in the bank folder); the extractor applies either the same way.

Pooling, upsampling and projection are all linear per pixel and channel, so the projection is
applied to each layer first (P = [P2; P3] split by rows) and only d channels are pooled and
upsampled: identical features, much less work (tests check it against the literal order).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exdd import defaults
from exdd_scoring.bank import BankError, load_projection, projection_sha256  # projection_sha256 re-exported
from exdd_scoring.manifest import BankManifest
from exdd_scoring.spec import RANDOM_PROJECTION, FeatureSpec

from .weights import BACKBONE, load_backbone

LAYERS = ("layer2", "layer3")
CHANNELS = (512, 1024)
DEFAULT_INPUT_HW = defaults.INPUT_HW
DEFAULT_D = defaults.D
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def make_projection(d: int, seed: int, c_in: int = sum(CHANNELS)) -> np.ndarray:
    """(c_in, d) float32 Gaussian matrix with unit-length columns, fixed by seed."""
    if d < 1:
        raise ValueError(f"projection dimension d must be >= 1, got {d}")
    p = np.random.default_rng(seed).standard_normal((c_in, d))
    p /= np.linalg.norm(p, axis=0, keepdims=True)
    return p.astype(np.float32)


def grid_of(input_hw: Tuple[int, int]) -> Tuple[int, int]:
    """layer2's grid (stride 8) for an input size, as the convolutions compute it."""

    def down(n: int) -> int:
        n = (n + 2 * 3 - 7) // 2 + 1  # conv1 7x7/2
        n = (n + 2 * 1 - 3) // 2 + 1  # maxpool 3x3/2
        return (n + 2 * 1 - 3) // 2 + 1  # layer2 3x3/2

    return down(input_hw[0]), down(input_hw[1])


class FeatureExtractor(nn.Module):
    """uint8 NHWC images -> projected, locally aggregated patch features (B, h, w, d)."""

    p2: torch.Tensor  # buffers (registered in __init__)
    p3: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: nn.Module, projection: np.ndarray, input_hw: Tuple[int, int]):
        super().__init__()
        self.backbone = backbone
        self.input_hw = tuple(input_hw)
        p = torch.from_numpy(np.ascontiguousarray(projection))
        self.register_buffer("p2", p[: CHANNELS[0]].clone())
        self.register_buffer("p3", p[CHANNELS[0] :].clone())
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype)
        x = (x - self.mean) / self.std
        l2, l3 = self.backbone(x)
        f2 = torch.einsum("bchw,cd->bdhw", l2, self.p2)
        f3 = torch.einsum("bchw,cd->bdhw", l3, self.p3)
        f2 = F.avg_pool2d(f2, 3, stride=1, padding=1)
        f3 = F.avg_pool2d(f3, 3, stride=1, padding=1)
        f3 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        return (f2 + f3).permute(0, 2, 3, 1).contiguous()

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """The unprojected aggregated features (B, h, w, 1536) in the literal order (pool, upsample, concat): what
        the projection multiplies, so forward(x) == raw(x) @ P up to float rounding. Fitting a projection reads it."""
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype)
        x = (x - self.mean) / self.std
        l2, l3 = self.backbone(x)
        l2 = F.avg_pool2d(l2, 3, stride=1, padding=1)
        l3 = F.interpolate(
            F.avg_pool2d(l3, 3, stride=1, padding=1), size=l2.shape[-2:], mode="bilinear", align_corners=False
        )
        return torch.cat([l2, l3], 1).permute(0, 2, 3, 1).contiguous()


def build_extractor(
    weights: str,
    d: int = DEFAULT_D,
    projection_seed: int = 0,
    input_hw: Tuple[int, int] = DEFAULT_INPUT_HW,
    projection: Optional[np.ndarray] = None,
    kind: str = RANDOM_PROJECTION,
) -> Tuple[FeatureExtractor, Dict[str, Any]]:
    """The extractor in eval mode and its feature fingerprint (the manifest's 'features').

    projection: a fitted matrix of that kind (d is its column count; projection_seed is recorded as 0);
    default: the random projection of projection_seed."""
    backbone, weights_id = load_backbone(weights)
    return with_projection(backbone, weights_id, input_hw, projection, kind, d, projection_seed)


def with_projection(
    backbone: nn.Module,
    weights_id: str,
    input_hw: Tuple[int, int],
    projection: Optional[np.ndarray] = None,
    kind: str = RANDOM_PROJECTION,
    d: int = DEFAULT_D,
    projection_seed: int = 0,
) -> Tuple[FeatureExtractor, Dict[str, Any]]:
    """build_extractor on a loaded backbone (a fitted projection reuses the backbone that fitted it)."""
    if projection is None:
        if kind != RANDOM_PROJECTION:
            raise ValueError(f"projection {kind!r} is fitted: its matrix is needed")
        projection = make_projection(d, projection_seed)
    else:
        projection_seed = 0
    model = FeatureExtractor(backbone, projection, input_hw).eval()
    return model, fingerprint(weights_id, projection, projection_seed, input_hw, kind)


def bank_extractor(
    bank_dir: str, manifest: BankManifest, weights: Optional[str] = None
) -> Tuple[FeatureExtractor, Dict[str, Any]]:
    """The extractor a bank directory was built with: its weights (unless given), input size and projection
    (random: made again from its seed; fitted: read from the bank's projection.npy, never refitted)."""
    f = manifest.features
    model, info = build_extractor(
        weights or f.weights_source or f.weights,
        f.d,
        f.projection_seed,
        f.input_size,
        load_projection(bank_dir, manifest),
        f.projection,
    )
    if info["projection_sha256"] != f.projection_sha256:
        raise BankError(
            f"{bank_dir}: the {f.projection} projection made for it hashes to "
            f"{info['projection_sha256'][:12]}..., the manifest names {f.projection_sha256[:12]}..."
        )
    return model, info


def fingerprint(
    weights_id: str, proj: np.ndarray, projection_seed: int, input_hw: Tuple[int, int], kind: str = RANDOM_PROJECTION
) -> Dict[str, Any]:
    """The features' identity (the manifest's 'features'): what a bank must match to be usable.

    Built and validated as a FeatureSpec; returned in its dict form (the manifest / ONNX metadata JSON).
    """
    return spec_of(weights_id, proj, projection_seed, input_hw, kind).to_dict()


def spec_of(
    weights_id: str, proj: np.ndarray, projection_seed: int, input_hw: Tuple[int, int], kind: str = RANDOM_PROJECTION
) -> FeatureSpec:
    """The FeatureSpec of an extractor with these weights, projection (of kind) and input size."""
    how = "gaussian projection" if kind == RANDOM_PROJECTION else f"{kind} projection fitted on normal patches"
    return FeatureSpec(
        backbone=BACKBONE,
        weights=weights_id,
        input_size=(int(input_hw[0]), int(input_hw[1])),
        layers=tuple(LAYERS),
        grid=grid_of(input_hw),
        projection_seed=int(projection_seed),
        projection_sha256=projection_sha256(proj),
        d=int(proj.shape[1]),
        aggregation=f"avg3x3-s1, layer3 bilinear to layer2 grid, concat, {how}",
        projection=kind,
    )
