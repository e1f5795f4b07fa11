"""Assemble a complete Triton model repository from an exported ONNX (or engine) and the banks of one or more products.

Layout written (one product, the default: ``exdd`` / ``exdd_scorer``; named products: ``exdd_<p>`` /
``exdd_<p>_scorer`` each, names from ``products.ProductModels``)::

    REPO/README.md                      what is inside: the products, built from which manifests
    REPO/exdd_preprocess/config.pbtxt   shared, python backend (numpy + Pillow), KIND_CPU
    REPO/exdd_preprocess/1/             model.py, exdd_scoring/ (decode + the one resize: exdd_scoring/picture.py)
    REPO/exdd_features/config.pbtxt     the shared extractor, once: onnxruntime | tensorrt_plan | python backend
    REPO/exdd_features/1/               model.onnx (+ model.py, exdd_scoring/) or model.plan, features.json
    REPO/exdd[_<p>]/config.pbtxt, 1/    per product: the ensemble IMAGE | IMAGE_BYTES -> exdd_preprocess ->
                                        exdd_features -> its scorer
    REPO/exdd[_<p>]_scorer/config.pbtxt per product: python backend (mode, threshold, features, product)
    REPO/exdd[_<p>]_scorer/1/           model.py, exdd_scoring/, banks/, features.json

Every model directory is self-contained (its own copy of the exdd_scoring modules its model.py imports, and
only those: ``model_files.scoring_modules``):
no model reads a file of another, so removing old scorer versions never breaks the features model.
Banks whose manifest features differ from the ONNX metadata are refused here (naming the product
and its bank directory), and again by the scorer at server load time (``features.json``), so
swapped banks never serve.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import List, Mapping, Optional

from exdd.fileio import fsync_tree, replace_dir
from exdd_scoring.bank import MANIFEST, sha256_file
from exdd_scoring.manifest import BankManifest
from exdd_scoring.onnx_metadata import PRECISION_KEY, read_features, read_metadata
from exdd_scoring.provenance import OfflineManifest  # the repository's README gives the bank sizes
from exdd_scoring.spec import FeatureSpec, SpecError

from .configs import KINDS, Serving, ensemble_config, features_config, line_parameters, preprocess_config, scorer_config
from .model_files import copy_python_model
from .products import FEATURES_MODEL, PREPROCESS_MODEL, SCORER_MODEL, ProductError, ProductModels, check_unique
from .registry import FEATURES_BACKENDS


class RepositoryError(ValueError):
    """Inputs that cannot make a repository; the message names the input."""


@dataclass
class AssembledProduct:
    """What was written for one product."""

    models: ProductModels
    bank_dir: str
    mode: str
    threshold: Optional[float]
    manifest_sha256: str


@dataclass
class Assembled:
    """What was written (mode, threshold and manifest_sha256: those of the first product)."""

    path: str
    features: FeatureSpec
    mode: str
    threshold: Optional[float]
    manifest_sha256: str
    products: List[AssembledProduct]


def copy_banks(bank_dir: str, dest: str, manifest: BankManifest) -> None:
    """Copy manifest.json (byte for byte: its sha256 is recorded) and the array files it lists (nothing else) into
    dest."""
    os.makedirs(dest)
    shutil.copy2(os.path.join(bank_dir, MANIFEST), dest)
    for name in manifest.files:
        shutil.copy2(os.path.join(bank_dir, os.path.basename(name)), dest)


def _python_model(version_dir: str, template: str) -> None:
    """The committed model.py of model template and the exdd_scoring modules it imports into version_dir (made if
    absent): what a self-contained Python-backend model directory holds besides its data."""
    copy_python_model(template, version_dir)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def choose_threshold(manifest: BankManifest, mode: str, override: Optional[float]) -> Optional[float]:
    """The served threshold: override, else the calibrated one of mode, else None (the manifest checked it is a
    number)."""
    if override is not None:
        return float(override)
    return manifest.thresholds.get(mode)


def _threshold_text(thr: Optional[float]) -> str:
    return "none (IS_DEFECT is false unless a request sends parameter `threshold`)" if thr is None else f"{thr:.6g}"


def readme(
    a: Assembled, manifests: Mapping[str, OfflineManifest], onnx_path: str, backend: str, s: Serving, precision: str
) -> str:
    """README.md of the repository (manifests: by scorer model name)."""
    f = a.features.to_dict()
    hw = f"{f['input_size'][0]}, {f['input_size'][1]}"
    rows = [
        f"| `{PREPROCESS_MODEL}` | python (numpy + Pillow) | shared by every product: decode, resize to "
        f"`MODEL_IMAGE` uint8 [B, {hw}, 3] (PIL bilinear, antialiased); `IMAGE_HW` each picture's own size |",
        f"| `{FEATURES_MODEL}` | {backend} ({precision}) | shared by every product: `IMAGE` -> `FEATURES` float32 "
        f"[B, {f['grid'][0]}, {f['grid'][1]}, {f['d']}] |",
    ]
    built = []
    for p in a.products:
        m = p.models
        rows.append(
            f"| `{m.ensemble}` | ensemble | product {m.display}: `IMAGE` uint8 [B, H, W, 3] (any size) "
            f"or `IMAGE_BYTES` "
            f"(encoded files, BYTES [B, 1]) -> `{PREPROCESS_MODEL}` -> `{FEATURES_MODEL}` -> `{m.scorer}` |"
        )
        rows.append(
            f"| `{m.scorer}` | python | product {m.display}: `FEATURES` -> `SCORE`, `IS_DEFECT`, `ANOMALY_MAP` "
            f"[{hw}], `SCORE_NEG`, `SCORE_POS` |"
        )
        man = manifests[m.scorer]
        cs = man.coreset
        sizes = "see manifest" if cs is None else f"negative {cs.negative.size}, positive {cs.positive.size}"
        built.append(
            f"- product {m.display} (`{m.ensemble}`): bank manifest "
            f"`{os.path.abspath(p.bank_dir)}/manifest.json`, "
            f"sha256 `{p.manifest_sha256}` (copied to `{m.scorer}/1/banks/manifest.json`); "
            f"bank sizes: {sizes}; "
            f"k = {man.k}; served mode `{p.mode}`; threshold {_threshold_text(p.threshold)}"
        )
    products = ", ".join(f"`{p.models.ensemble}`" for p in a.products)
    table = "\n".join(rows)
    sources = "\n".join(built)
    return f"""# ExDD Triton model repository

Built by `exdd export repository` on {_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}.
Products: {", ".join(p.models.display for p in a.products)} (clients send `IMAGE` to {products}).

| model | backend | job |
|---|---|---|
{table}

Instances: {s.instances} x KIND_{s.kind.upper()} per model, max_batch_size {s.max_batch}, dynamic batching
(max queue delay {s.queue_delay_us} us), one warm-up request per model.

## Built from

{sources}
- features: backbone {f.get("backbone")}, weights `{f.get("weights")}`, input {f["input_size"][0]}x{f["input_size"][1]},
  grid {f["grid"][0]}x{f["grid"][1]}, d {f["d"]}, projection {f.get("projection", "random")}
  (seed {f.get("projection_seed")}, sha256 `{str(f.get("projection_sha256"))[:16]}...`)
- extractor: `{os.path.abspath(onnx_path)}` (sha256 `{sha256_file(onnx_path)}`)

`features.json` (in every scorer's `1/` and in `{FEATURES_MODEL}/1/`) is the fingerprint each scorer checks its
banks against when the server loads it; replacing a product's banks with ones made for other features makes its
scorer (and so its ensemble) fail to load, with the mismatch named in the server log; the other products keep serving.

Serve it with `exdd serve {os.path.basename(a.path)}`; clients send `IMAGE` (any size) or `IMAGE_BYTES` to a
product's ensemble and may set the request parameter `threshold` (a number) to override its served threshold.
`exdd deploy BANKS --product NAME` swaps one product's banks (a new version of its scorer) without touching the
others. `{PREPROCESS_MODEL}` needs Pillow in the server's Python (`pip install pillow`).
"""


def _check_serving(features_backend: str, s: Serving, engine_path: Optional[str]) -> None:
    """RepositoryError naming the option when the backend, kind, instances or engine cannot work together."""
    if features_backend not in FEATURES_BACKENDS:
        raise RepositoryError(f"--features-backend {features_backend!r}: expected one of {tuple(FEATURES_BACKENDS)}")
    fb = FEATURES_BACKENDS[features_backend]
    if s.kind not in KINDS:
        raise RepositoryError(f"--kind {s.kind!r}: expected one of {KINDS}")
    if s.instances < 1 or s.max_batch < 1:
        raise RepositoryError("--instances and --max-batch must be at least 1")
    if fb.cpu_only and s.kind != "cpu":
        raise RepositoryError(
            f"--features-backend {fb.name} runs on the CPU: use --kind cpu (or onnxruntime / "
            "tensorrt_plan for GPU instances)"
        )
    if fb.needs_engine and not (engine_path and os.path.isfile(engine_path)):
        raise RepositoryError(f"--features-backend {fb.name} needs --engine PATH (a built engine), got {engine_path!r}")


def _load_product(pm: ProductModels, bank_dir: str, features: FeatureSpec, onnx_path: str):
    """The product's verified banks; RepositoryError naming the product and its bank directory otherwise."""
    from exdd_scoring import BankError, load_banks
    from exdd_scoring.bank import check_features

    where = (
        f"{bank_dir} vs {onnx_path}"
        if pm.product is None
        else f"product {pm.product!r}: banks {bank_dir} vs the shared extractor {onnx_path}"
    )
    try:
        banks = load_banks(bank_dir, manifest_cls=OfflineManifest)
        check_features(banks.manifest.features, features, where)
    except BankError as e:
        msg = str(e)
        raise RepositoryError(
            msg
            if pm.product is None or msg.startswith("product ")
            else f"product {pm.product!r}: banks {bank_dir}: {msg}"
        ) from None
    return banks


def _write_scorer(
    tmp: str,
    pm: ProductModels,
    bank_dir: str,
    manifest: BankManifest,
    fjson: str,
    index: str,
    index_min_size: Optional[int],
    log,
) -> None:
    """The product's scorer version 1: model.py, exdd_scoring/, banks/ (+ index), features.json."""
    from exdd_scoring import BankError

    scorer_v = os.path.join(tmp, pm.scorer, "1")
    _python_model(scorer_v, SCORER_MODEL)
    copy_banks(bank_dir, os.path.join(scorer_v, "banks"), manifest)
    if index != "exact":
        from .ann_index import DEFAULT_MIN_SIZE, add_index

        try:
            add_index(
                os.path.join(scorer_v, "banks"),
                index,
                DEFAULT_MIN_SIZE if index_min_size is None else index_min_size,
                log=log or (lambda s: None),
            )
        except BankError as e:
            where = "" if pm.product is None else f"product {pm.product!r}: "
            raise RepositoryError(where + str(e)) from None
    _write(os.path.join(scorer_v, "features.json"), fjson)


def assemble_products(
    onnx_path: str,
    products: Mapping[Optional[str], str],
    out_dir: str,
    features_backend: str = "python",
    serving: Optional[Serving] = None,
    engine_path: Optional[str] = None,
    mode: Optional[str] = None,
    threshold: Optional[float] = None,
    force: bool = False,
    index: str = "exact",
    index_min_size: Optional[int] = None,
    log=None,
    min_area: Optional[int] = None,
) -> Assembled:
    """Write a repository serving products {name: bank dir} (name None: the default product) into out_dir, atomically.

    One shared exdd_features; per product a scorer and an ensemble (products.ProductModels). mode applies to every
    product (default: each banks' default_mode); threshold overrides the calibrated one and needs a single product.
    index 'hnsw' adds an approximate nearest-neighbour index for banks of at least index_min_size vectors (CPU
    instances use it; GPU instances search exactly). min_area: the served minimum defect area (issue 27; default
    the banks' own, 0 = off)."""
    from exdd_scoring import MODES

    s = serving or Serving()
    _check_serving(features_backend, s, engine_path)
    fb = FEATURES_BACKENDS[features_backend]
    try:
        models = check_unique(list(products))
    except ProductError as e:
        raise RepositoryError(str(e)) from None
    if threshold is not None and len(models) > 1:
        raise RepositoryError(
            "--threshold sets one threshold for every product: with several products each serves "
            "its banks' calibrated threshold (leave --threshold out)"
        )
    if mode is not None and mode not in MODES:
        raise RepositoryError(f"mode {mode!r}: expected one of {MODES}")
    try:
        features = FeatureSpec.from_dict(read_features(onnx_path), f"{onnx_path} metadata")
    except SpecError as e:
        raise RepositoryError(str(e)) from None
    precision = dict(fb.parameters).get("inference_precision") or read_metadata(onnx_path).get(PRECISION_KEY, "fp32")
    loaded = {pm.scorer: _load_product(pm, products[pm.product], features, onnx_path) for pm in models}
    made: List[AssembledProduct] = []
    for pm in models:
        manifest = loaded[pm.scorer].manifest
        m = mode or manifest.default_mode
        if m not in MODES:
            raise RepositoryError(f"mode {m!r} of {products[pm.product]}: expected one of {MODES}")
        made.append(
            AssembledProduct(
                pm,
                products[pm.product],
                m,
                choose_threshold(manifest, m, threshold),
                sha256_file(os.path.join(products[pm.product], MANIFEST)),
            )
        )
        try:  # a minimum area needs banks that measure regions (issue 27)
            line_parameters(manifest, m, made[-1].threshold, min_area)
        except ValueError as e:
            raise RepositoryError(f"{products[pm.product]}: {e}") from None
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not force:
        raise RepositoryError(f"{out_dir}: exists and is not empty (use --force to replace it)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".exdd-repo-", dir=parent)
    try:
        _python_model(os.path.join(tmp, PREPROCESS_MODEL, "1"), PREPROCESS_MODEL)
        fjson = json.dumps(features.to_dict(), indent=2, sort_keys=True)
        feats_v = os.path.join(tmp, FEATURES_MODEL, "1")
        os.makedirs(feats_v)
        _write(os.path.join(feats_v, "features.json"), fjson)
        src = engine_path if fb.needs_engine else onnx_path
        if src is None:  # refused by _check_serving already
            raise RepositoryError(f"--features-backend {fb.name} needs --engine PATH (a built engine)")
        shutil.copy2(src, os.path.join(feats_v, fb.model_file))
        if fb.python_model:
            _python_model(feats_v, FEATURES_MODEL)
        _write(os.path.join(tmp, FEATURES_MODEL, "config.pbtxt"), features_config(features, features_backend, s))
        _write(os.path.join(tmp, PREPROCESS_MODEL, "config.pbtxt"), preprocess_config(features, s))
        for p in made:
            pm = p.models
            _write_scorer(tmp, pm, p.bank_dir, loaded[pm.scorer].manifest, fjson, index, index_min_size, log)
            _write(
                os.path.join(tmp, pm.scorer, "config.pbtxt"),
                scorer_config(
                    features,
                    p.mode,
                    p.threshold,
                    s,
                    name=pm.scorer,
                    product=pm.product,
                    line=line_parameters(loaded[pm.scorer].manifest, p.mode, p.threshold, min_area),
                ),
            )
            os.makedirs(os.path.join(tmp, pm.ensemble, "1"))
            _write(
                os.path.join(tmp, pm.ensemble, "config.pbtxt"),
                ensemble_config(features, s, name=pm.ensemble, scorer=pm.scorer),
            )
        first = made[0]
        result = Assembled(out_dir, features, first.mode, first.threshold, first.manifest_sha256, made)
        manifests = {scorer: b.manifest for scorer, b in loaded.items()}
        _write(os.path.join(tmp, "README.md"), readme(result, manifests, onnx_path, features_backend, s, precision))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 -> a plain folder's mode
        fsync_tree(tmp)  # durable before it is swapped in; the old one goes only then
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def assemble(
    onnx_path: str,
    bank_dir: str,
    out_dir: str,
    features_backend: str = "python",
    serving: Optional[Serving] = None,
    engine_path: Optional[str] = None,
    mode: Optional[str] = None,
    threshold: Optional[float] = None,
    force: bool = False,
    index: str = "exact",
    index_min_size: Optional[int] = None,
    log=None,
) -> Assembled:
    """The one-product repository (``exdd`` / ``exdd_scorer``) of bank_dir; see assemble_products."""
    return assemble_products(
        onnx_path,
        {None: bank_dir},
        out_dir,
        features_backend,
        serving,
        engine_path,
        mode,
        threshold,
        force,
        index,
        index_min_size,
        log,
    )
