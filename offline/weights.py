"""Backbone weights: ImageNet (torchvision), a local checkpoint, or a seeded random init.

Weight ids: ``imagenet`` (torchvision's IMAGENET1K_V1, loaded the normal way, cached under
TORCH_HOME), a path to a ``.safetensors`` / ``.pth`` state dict (partial ones holding only
conv1, bn1 and layer1..layer3 are fine), or ``random:SEED``. No checkpoint is ever unpickled.
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

import torch
from torch import nn

BACKBONE = "wide_resnet50_2"
STEM = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")


class WeightsError(RuntimeError):
    """Weights that cannot be had or do not fit the backbone."""


class TruncatedWideResNet(nn.Module):
    """WideResNet50-2 up to layer3: the forward stops after the last layer the features need."""

    conv1: nn.Module  # the STEM modules, taken from torchvision's model
    bn1: nn.Module
    relu: nn.Module
    maxpool: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import wide_resnet50_2

        full = wide_resnet50_2(weights=None)
        for name in STEM:
            setattr(self, name, getattr(full, name))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l2 = self.layer2(self.layer1(x))
        return l2, self.layer3(l2)


def _file_id(path: str) -> str:
    from exdd_scoring.bank import sha256_file

    return f"file:{os.path.basename(path)}@sha256:{sha256_file(path)[:16]}"


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: not a state dict")
    return obj


def load_backbone(weights: str) -> Tuple[TruncatedWideResNet, str]:
    """The truncated backbone in eval mode and the id of its weights."""
    if weights.startswith("random:"):
        try:
            seed = int(weights.split(":", 1)[1])
        except ValueError:
            raise WeightsError(f"weights {weights!r}: expected random:SEED with an integer seed") from None
        torch.manual_seed(seed)
        return TruncatedWideResNet().eval(), f"random:{seed}"
    model = TruncatedWideResNet()
    if weights == "imagenet":
        try:
            from torchvision.models import Wide_ResNet50_2_Weights

            sd = Wide_ResNet50_2_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as e:  # network / cache failures of every kind
            raise WeightsError(
                "ImageNet weights for wide_resnet50_2 could not be had (no cached copy under "
                f"TORCH_HOME and no download: {type(e).__name__}: {e}). Give a local checkpoint with "
                "--weights PATH, or random:SEED for an untrained backbone."
            ) from None
        wid = "imagenet:IMAGENET1K_V1"
    else:
        if not os.path.isfile(weights):
            raise WeightsError(f"weights {weights!r}: not 'imagenet', 'random:SEED' or an existing file")
        try:
            sd = _read_state_dict(weights)
        except WeightsError:
            raise
        except Exception as e:
            raise WeightsError(f"{weights}: unreadable checkpoint ({type(e).__name__}: {e})") from None
        wid = _file_id(weights)
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise WeightsError(f"{weights}: checkpoint lacks {len(missing)} backbone tensors, e.g. {missing[:3]}")
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise WeightsError(f"{weights}: shape mismatch for {bad[:3]} (not a wide_resnet50_2 checkpoint?)")
    model.load_state_dict({k: sd[k].to(own[k].dtype) for k in own}, strict=True)
    return model.eval(), wid


def is_random(weights_id: str) -> bool:
    """Whether features from these weights come from an untrained (random) backbone."""
    return weights_id.startswith("random:")
