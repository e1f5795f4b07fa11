"""config.pbtxt of the four models (preprocess, features, scorer, ensemble): the committed templates in
``model_repository/`` (package data) with what varies filled in through Triton's protobuf
(``ModelConfig`` of tritonclient, protobuf text format), never by string formatting."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional

from exdd_scoring.answer import check_min_area, review_band
from exdd_scoring.manifest import BankManifest
from exdd_scoring.model_names import ENSEMBLE_MODEL, FEATURES_MODEL, PREPROCESS_MODEL, SCORER_MODEL
from exdd_scoring.spec import FeatureSpec

from .registry import FEATURES_BACKENDS

KINDS = ("cpu", "gpu")


@dataclass
class Serving:
    """How the models are instantiated and batched."""

    kind: str = "cpu"
    instances: int = 1
    max_batch: int = 8
    queue_delay_us: int = 2000


def protobuf():
    """(model_config_pb2, text_format): Triton's ModelConfig message and protobuf's text format."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2, text_format


def template(name: str) -> Any:
    """The committed config.pbtxt of model `name` parsed into a ModelConfig message."""
    from .model_files import model_files

    mc, text_format = protobuf()
    text = (model_files() / name / "config.pbtxt").read_text()
    return text_format.Parse(text, mc.ModelConfig())


def to_text(config: Any) -> str:
    """A ModelConfig message as config.pbtxt text."""
    _, text_format = protobuf()
    return text_format.MessageToString(config)


def _set_dims(field: Any, dims) -> None:
    del field.dims[:]
    field.dims.extend(int(v) for v in dims)


def _serving(config: Any, s: Serving, cpu_only: bool = False) -> None:
    mc, _ = protobuf()
    config.max_batch_size = int(s.max_batch)
    if config.platform != "ensemble":
        gpu = s.kind == "gpu" and not cpu_only
        del config.instance_group[:]
        config.instance_group.add(
            count=int(s.instances), kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
        )
        config.dynamic_batching.max_queue_delay_microseconds = int(s.queue_delay_us)


def _warmup_dims(config: Any, name: str, dims) -> None:
    for w in config.model_warmup:
        if name in w.inputs:
            _set_dims(w.inputs[name], dims)


def _io(config: Any, section: str, name: str) -> Any:
    for t in getattr(config, section):
        if t.name == name:
            return t
    raise KeyError(f"template {config.name}: no {section} {name!r}")


def features_config(features: FeatureSpec, backend: str, s: Serving) -> str:
    """config.pbtxt of exdd_features for a backend of the registry (onnxruntime, tensorrt_plan, python, ...)."""
    if backend not in FEATURES_BACKENDS:
        raise ValueError(f"features backend {backend!r}: expected one of {tuple(FEATURES_BACKENDS)}")
    spec = FeatureSpec.from_dict(features)
    c = template(FEATURES_MODEL)
    b = FEATURES_BACKENDS[backend]
    c.ClearField("backend")
    c.ClearField("platform")
    c.ClearField("default_model_filename")
    if b.platform:
        c.platform = b.platform
    if b.backend:
        c.backend = b.backend
    if b.model_file and b.platform:
        c.default_model_filename = b.model_file
    if not b.python_model:
        c.parameters.pop("intra_op_threads", None)
    for key, value in b.parameters:
        c.parameters[key].string_value = value
    image = (*spec.input_size, 3)
    _set_dims(_io(c, "input", "IMAGE"), image)
    _set_dims(_io(c, "output", "FEATURES"), spec.features_shape)
    _warmup_dims(c, "IMAGE", image)
    _serving(c, s)
    return to_text(c)


def line_parameters(
    manifest: BankManifest, mode: str, threshold: Optional[float], min_area: Optional[int] = None
) -> Dict[str, Optional[str]]:
    """The scorer's config parameters a client reads to describe its answers (issue 27): review_band, the JSON
    {"ok_below": T1, "defect_above": T2} served with this threshold (None: removed, no band), and min_area (the
    served minimum defect area: min_area, else the banks' own; ValueError when the banks cannot measure one)."""
    t1, t2 = review_band(manifest.line, mode, threshold)
    area = (0 if manifest.line is None else manifest.line.min_area) if min_area is None else int(min_area)
    check_min_area(manifest.line, mode, area, "--min-area")
    return {
        "review_band": None if t1 is None else json.dumps({"ok_below": t1, "defect_above": t2}),
        "min_area": str(area),
    }


def scorer_config(
    features: FeatureSpec,
    mode: str,
    threshold: Optional[float],
    s: Serving,
    sigma: float = 4.0,
    *,
    name: str = SCORER_MODEL,
    product: Optional[str] = None,
    line: Optional[Dict[str, Optional[str]]] = None,
) -> str:
    """config.pbtxt of a scorer (Python backend) named name; mode, threshold, features and product are readable by
    clients.

    threshold None leaves the parameter out (the scorer then serves IS_DEFECT false unless a request sets one);
    product None leaves the `product` parameter out (the default product of a one-product repository).
    """
    spec = FeatureSpec.from_dict(features)
    c = template(SCORER_MODEL)
    c.name = name
    _set_dims(_io(c, "input", "FEATURES"), spec.features_shape)
    _set_dims(_io(c, "output", "ANOMALY_MAP"), spec.input_size)
    _warmup_dims(c, "FEATURES", spec.features_shape)
    _serving(c, s)
    params: Dict[str, str] = {"mode": mode, "sigma": repr(float(sigma)), "features": spec.to_json()}
    if threshold is not None:
        params["threshold"] = repr(float(threshold))
    if product is not None:
        params["product"] = product
    params.update({k: v for k, v in (line or {}).items() if v is not None})
    if s.kind == "gpu":
        params["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"  # take GPU tensors as they are (DLPack)
    c.parameters.pop("threshold", None)
    for k, v in params.items():
        c.parameters[k].string_value = v
    return to_text(c)


def preprocess_config(features: FeatureSpec, s: Serving) -> str:
    """config.pbtxt of exdd_preprocess (Python backend, always KIND_CPU): any picture -> the model-input array."""
    spec = FeatureSpec.from_dict(features)
    c = template(PREPROCESS_MODEL)
    image = (*spec.input_size, 3)
    _set_dims(_io(c, "output", "MODEL_IMAGE"), image)
    for w in c.model_warmup:
        if w.name == "warmup_zero_data":
            _set_dims(w.inputs["IMAGE"], image)
    _serving(c, s, cpu_only=True)
    return to_text(c)


def _step(config: Any, model_name: str) -> Any:
    """The ensemble step that runs model_name (found by name, not position)."""
    for st in config.ensemble_scheduling.step:
        if st.model_name == model_name:
            return st
    raise KeyError(f"template {config.name}: no ensemble step running {model_name!r}")


def ensemble_config(
    features: FeatureSpec, s: Serving, *, name: str = ENSEMBLE_MODEL, scorer: str = SCORER_MODEL
) -> str:
    """config.pbtxt of the ensemble name: IMAGE (any size) or IMAGE_BYTES -> exdd_preprocess -> exdd_features ->
    scorer (the shared preprocess and extractor, a product's scorer)."""
    spec = FeatureSpec.from_dict(features)
    c = template(ENSEMBLE_MODEL)
    c.name = name
    _step(c, SCORER_MODEL).model_name = scorer
    _set_dims(_io(c, "output", "ANOMALY_MAP"), spec.input_size)
    _serving(c, s)
    return to_text(c)
