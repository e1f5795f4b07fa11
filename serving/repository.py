"""Assemble a complete Triton model repository from an exported ONNX (or engine) and a bank directory.

Layout written::

    REPO/README.md                      what is inside, built from which manifest
    REPO/exdd/config.pbtxt, 1/          ensemble IMAGE | IMAGE_BYTES -> exdd_preprocess -> exdd_features -> exdd_scorer
    REPO/exdd_preprocess/config.pbtxt   python backend (numpy + Pillow), KIND_CPU
    REPO/exdd_preprocess/1/             model.py, exdd_scoring/ (decode + the one resize: exdd_scoring/picture.py)
    REPO/exdd_features/config.pbtxt     onnxruntime | tensorrt_plan | python backend
    REPO/exdd_features/1/               model.onnx (+ model.py, exdd_scoring/) or model.plan, features.json
    REPO/exdd_scorer/config.pbtxt       python backend
    REPO/exdd_scorer/1/                 model.py, exdd_scoring/, banks/, features.json

Every model directory is self-contained (its own copy of exdd_scoring/ where its model.py needs one):
no model reads a file of another, so removing old scorer versions never breaks the features model.
Banks whose manifest features differ from the ONNX metadata are refused here, and again by the
scorer at server load time (``features.json``), so swapped banks never serve.
"""
from __future__ import annotations

import datetime as _dt
import importlib.resources
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

from exdd_scoring.bank import MANIFEST, sha256_file
from exdd_scoring.manifest import BankManifest

from exdd_scoring.spec import FeatureSpec, SpecError

from .configs import KINDS, Serving, ensemble_config, features_config, preprocess_config, scorer_config
from exdd_scoring.onnx_metadata import PRECISION_KEY, read_features, read_metadata

from .model_files import copy_resource, model_files
from .registry import FEATURES_BACKENDS


class RepositoryError(ValueError):
    """Inputs that cannot make a repository; the message names the input."""


@dataclass
class Assembled:
    """What was written."""
    path: str
    features: FeatureSpec
    mode: str
    threshold: Optional[float]
    manifest_sha256: str


def copy_banks(bank_dir: str, dest: str, manifest: BankManifest) -> None:
    """Copy manifest.json (byte for byte: its sha256 is recorded) and the array files it lists (nothing else) into dest."""
    os.makedirs(dest)
    shutil.copy2(os.path.join(bank_dir, MANIFEST), dest)
    for name in manifest.files:
        shutil.copy2(os.path.join(bank_dir, os.path.basename(name)), dest)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def choose_threshold(manifest: BankManifest, mode: str, override: Optional[float]) -> Optional[float]:
    """The served threshold: override, else the calibrated one of mode, else None (the manifest checked it is a number)."""
    if override is not None:
        return float(override)
    return manifest.threshold_of(mode)


def readme(a: Assembled, manifest: BankManifest, bank_dir: str, onnx_path: str, backend: str,
           s: Serving, precision: str) -> str:
    """README.md of the repository."""
    f = a.features.to_dict()
    cs = manifest.coreset
    sizes = "see manifest" if cs is None else f"negative {cs.negative.size}, positive {cs.positive.size}"
    thr = "none (IS_DEFECT is false unless a request sends parameter `threshold`)" if a.threshold is None \
        else f"{a.threshold:.6g}"
    return f"""# ExDD Triton model repository

Built by `exdd export repository` on {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.

| model | backend | job |
|---|---|---|
| `exdd` | ensemble | `IMAGE` uint8 [B, H, W, 3] (any size) or `IMAGE_BYTES` (encoded files, BYTES [B, 1]) -> `exdd_preprocess` -> `exdd_features` -> `exdd_scorer` |
| `exdd_preprocess` | python (numpy + Pillow) | decode, resize to `MODEL_IMAGE` uint8 [B, {f['input_size'][0]}, {f['input_size'][1]}, 3] (PIL bilinear, antialiased); `IMAGE_HW` each picture's own size |
| `exdd_features` | {backend} ({precision}) | `IMAGE` -> `FEATURES` float32 [B, {f['grid'][0]}, {f['grid'][1]}, {f['d']}] |
| `exdd_scorer` | python | `FEATURES` -> `SCORE`, `IS_DEFECT`, `ANOMALY_MAP` [{f['input_size'][0]}, {f['input_size'][1]}], `SCORE_NEG`, `SCORE_POS` |

Instances: {s.instances} x KIND_{s.kind.upper()} per model, max_batch_size {s.max_batch}, dynamic batching
(max queue delay {s.queue_delay_us} us), one warm-up request per model.

## Built from

- bank manifest: `{os.path.abspath(bank_dir)}/manifest.json`, sha256 `{a.manifest_sha256}`
  (copied to `exdd_scorer/1/banks/manifest.json`)
- bank sizes: {sizes}; k = {manifest.k}
- features: backbone {f.get('backbone')}, weights `{f.get('weights')}`, input {f['input_size'][0]}x{f['input_size'][1]},
  grid {f['grid'][0]}x{f['grid'][1]}, d {f['d']}, projection seed {f.get('projection_seed')}
  (sha256 `{str(f.get('projection_sha256'))[:16]}...`)
- extractor: `{os.path.abspath(onnx_path)}` (sha256 `{sha256_file(onnx_path)}`)
- served mode: `{a.mode}`; threshold: {thr}

`features.json` (in `exdd_scorer/1/` and `exdd_features/1/`) is the fingerprint the scorer checks the
banks against when the server loads it; replacing the banks with ones made for other features makes
`exdd_scorer` (and so `exdd`) fail to load, with the mismatch named in the server log.

Serve it with `exdd serve {os.path.basename(a.path)}`; clients send `IMAGE` (any size) or `IMAGE_BYTES` to `exdd`
and may set the request parameter `threshold` (a number) to override the served threshold. `exdd_preprocess`
needs Pillow in the server's Python (`pip install pillow`).
"""


def assemble(onnx_path: str, bank_dir: str, out_dir: str, features_backend: str = "python",
             serving: Optional[Serving] = None, engine_path: Optional[str] = None, mode: Optional[str] = None,
             threshold: Optional[float] = None, force: bool = False, index: str = "exact",
             index_min_size: Optional[int] = None, log=None) -> Assembled:
    """Write the repository into out_dir (atomically, via a temporary sibling directory).

    index 'hnsw' adds an approximate nearest-neighbour index for banks of at least index_min_size
    vectors (CPU instances use it; GPU instances search exactly)."""
    from exdd_scoring import MODES, BankError, load_banks
    from exdd_scoring.bank import check_features

    s = serving or Serving()
    if features_backend not in FEATURES_BACKENDS:
        raise RepositoryError(f"--features-backend {features_backend!r}: expected one of {tuple(FEATURES_BACKENDS)}")
    fb = FEATURES_BACKENDS[features_backend]
    if s.kind not in KINDS:
        raise RepositoryError(f"--kind {s.kind!r}: expected one of {KINDS}")
    if s.instances < 1 or s.max_batch < 1:
        raise RepositoryError("--instances and --max-batch must be at least 1")
    if fb.cpu_only and s.kind != "cpu":
        raise RepositoryError(f"--features-backend {fb.name} runs on the CPU: use --kind cpu (or onnxruntime / "
                              "tensorrt_plan for GPU instances)")
    if fb.needs_engine and not (engine_path and os.path.isfile(engine_path)):
        raise RepositoryError(f"--features-backend {fb.name} needs --engine PATH (a built engine), got {engine_path!r}")
    try:
        features = FeatureSpec.from_dict(read_features(onnx_path), f"{onnx_path} metadata")
    except SpecError as e:
        raise RepositoryError(str(e)) from None
    precision = dict(fb.parameters).get("inference_precision") or read_metadata(onnx_path).get(PRECISION_KEY, "fp32")
    try:
        banks = load_banks(bank_dir)
        check_features(banks.manifest.features, features, f"{bank_dir} vs {onnx_path}")
    except BankError as e:
        raise RepositoryError(str(e)) from None
    manifest = banks.manifest
    mode = mode or manifest.default_mode
    if mode not in MODES:
        raise RepositoryError(f"mode {mode!r}: expected one of {MODES}")
    thr = choose_threshold(manifest, mode, threshold)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not force:
        raise RepositoryError(f"{out_dir}: exists and is not empty (use --force to replace it)")
    src = model_files()
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".exdd-repo-", dir=parent)
    try:
        scorer_v = os.path.join(tmp, "exdd_scorer", "1")
        feats_v = os.path.join(tmp, "exdd_features", "1")
        os.makedirs(scorer_v)
        os.makedirs(feats_v)
        os.makedirs(os.path.join(tmp, "exdd", "1"))
        pre_v = os.path.join(tmp, "exdd_preprocess", "1")
        os.makedirs(pre_v)
        copy_resource(src / "exdd_preprocess" / "1" / "model.py", os.path.join(pre_v, "model.py"))
        copy_resource(importlib.resources.files("exdd_scoring"), os.path.join(pre_v, "exdd_scoring"))
        copy_resource(src / "exdd_scorer" / "1" / "model.py", os.path.join(scorer_v, "model.py"))
        copy_resource(importlib.resources.files("exdd_scoring"), os.path.join(scorer_v, "exdd_scoring"))
        copy_banks(bank_dir, os.path.join(scorer_v, "banks"), manifest)
        if index != "exact":
            from .ann_index import DEFAULT_MIN_SIZE, add_index
            try:
                add_index(os.path.join(scorer_v, "banks"), index,
                          DEFAULT_MIN_SIZE if index_min_size is None else index_min_size, log=log or (lambda s: None))
            except BankError as e:
                raise RepositoryError(str(e)) from None
        fjson = json.dumps(features.to_dict(), indent=2, sort_keys=True)
        _write(os.path.join(scorer_v, "features.json"), fjson)
        _write(os.path.join(feats_v, "features.json"), fjson)
        shutil.copy2(engine_path if fb.needs_engine else onnx_path, os.path.join(feats_v, fb.model_file))
        if fb.python_model:
            copy_resource(src / "exdd_features" / "1" / "model.py", os.path.join(feats_v, "model.py"))
            copy_resource(importlib.resources.files("exdd_scoring"), os.path.join(feats_v, "exdd_scoring"))
        _write(os.path.join(tmp, "exdd_features", "config.pbtxt"), features_config(features, features_backend, s))
        _write(os.path.join(tmp, "exdd_scorer", "config.pbtxt"), scorer_config(features, mode, thr, s))
        _write(os.path.join(tmp, "exdd_preprocess", "config.pbtxt"), preprocess_config(features, s))
        _write(os.path.join(tmp, "exdd", "config.pbtxt"), ensemble_config(features, s))
        result = Assembled(out_dir, features, mode, thr, sha256_file(os.path.join(bank_dir, MANIFEST)))
        _write(os.path.join(tmp, "README.md"), readme(result, manifest, bank_dir, onnx_path, features_backend, s, precision))
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
