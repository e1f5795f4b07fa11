"""ExDD scoring math, written once against an ``xp`` array module (numpy or cupy).

This package lives inside the Triton scorer model so that a model repository deploys by
copying it; the offline evaluator imports the same files as ``exdd_scoring``. It must only
ever import numpy (and cupy when given), json, hashlib and the standard library.
"""
from .bank import (BANK_FORMAT_VERSION, Bank, BankError, BankPair, FEATURE_KEYS, load_banks, load_projection,
                   read_manifest, read_manifest_features, read_manifest_spec, save_bank)
from .manifest import MANIFEST_VERSION, BankManifest, ManifestError
from .spec import FeatureSpec, SpecError
from .knn import nearest, topk_nearest
from .resample import upsample_smooth_matrices, upsample_smooth
from .scores import (DEFAULT_MODE, MAP_KINDS, MODE_REGISTRY, MODES, Evidence, Mode, image_scores, register_mode,
                     reweight_q)
from .score_batch import ScoreBatch
from .scorer import Scorer, map_of_mode
from . import ann

__all__ = [
    "BANK_FORMAT_VERSION", "Bank", "BankError", "BankPair", "FEATURE_KEYS", "load_banks", "load_projection",
    "read_manifest",
    "read_manifest_features", "read_manifest_spec", "save_bank", "MANIFEST_VERSION", "BankManifest", "ManifestError",
    "FeatureSpec", "SpecError",
    "nearest", "topk_nearest", "upsample_smooth_matrices", "upsample_smooth", "DEFAULT_MODE", "MAP_KINDS",
    "MODE_REGISTRY", "MODES", "Evidence", "Mode", "image_scores", "register_mode", "reweight_q", "ScoreBatch", "Scorer", "map_of_mode",
]
