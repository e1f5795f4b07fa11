"""config.pbtxt text of the three models (features, scorer, ensemble), generated from the features fingerprint."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

FEATURES_BACKENDS = ("onnxruntime", "tensorrt_plan", "python")
KINDS = ("cpu", "gpu")
SCORER_OUTPUTS: Tuple[Tuple[str, str, str], ...] = (
    ("SCORE", "TYPE_FP32", "[ 1 ]"), ("IS_DEFECT", "TYPE_BOOL", "[ 1 ]"), ("ANOMALY_MAP", "TYPE_FP32", "[ {H}, {W} ]"),
    ("SCORE_NEG", "TYPE_FP32", "[ 1 ]"), ("SCORE_POS", "TYPE_FP32", "[ 1 ]"))


@dataclass
class Serving:
    """How the models are instantiated and batched."""
    kind: str = "cpu"
    instances: int = 1
    max_batch: int = 8
    queue_delay_us: int = 2000


def _dims(values) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _io(section: str, entries: List[Tuple[str, str, str]]) -> str:
    body = ",\n".join(f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: {d}\n  }}' for n, t, d in entries)
    return f"{section} [\n{body}\n]\n"


def _parameters(params: Dict[str, str]) -> str:
    return "".join(f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n' for k, v in params.items())


def _scheduling(s: Serving) -> str:
    kind = "KIND_GPU" if s.kind == "gpu" else "KIND_CPU"
    return (f"instance_group [\n  {{\n    kind: {kind}\n    count: {int(s.instances)}\n  }}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(s.queue_delay_us)}\n}}\n")


def _warmup(name: str, dtype: str, dims: str, data: str) -> str:
    return (f'model_warmup [\n  {{\n    name: "warmup_{data}"\n    batch_size: 1\n    inputs {{\n      key: "{name}"\n'
            f"      value {{\n        data_type: {dtype}\n        dims: {dims}\n        {data}: true\n      }}\n    }}\n  }}\n]\n")


def features_config(features: Dict, backend: str, s: Serving) -> str:
    """config.pbtxt of exdd_features for backend onnxruntime | tensorrt_plan | python."""
    if backend not in FEATURES_BACKENDS:
        raise ValueError(f"features backend {backend!r}: expected one of {FEATURES_BACKENDS}")
    h, w = features["input_size"]
    gh, gw = features["grid"]
    head = {"onnxruntime": 'platform: "onnxruntime_onnx"\ndefault_model_filename: "model.onnx"\n',
            "tensorrt_plan": 'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"\n',
            "python": 'backend: "python"\n'}[backend]
    text = (f'name: "exdd_features"\n{head}max_batch_size: {int(s.max_batch)}\n'
            + _io("input", [("IMAGE", "TYPE_UINT8", _dims((h, w, 3)))])
            + _io("output", [("FEATURES", "TYPE_FP32", _dims((gh, gw, features["d"])))])
            + _scheduling(s) + _warmup("IMAGE", "TYPE_UINT8", _dims((h, w, 3)), "zero_data"))
    if backend == "python":
        text += _parameters({"intra_op_threads": "0"})
    return text


def scorer_config(features: Dict, mode: str, threshold: str, s: Serving, sigma: float = 4.0) -> str:
    """config.pbtxt of exdd_scorer (Python backend); mode and threshold are readable by clients."""
    h, w = features["input_size"]
    gh, gw = features["grid"]
    outs = [(n, t, d.format(H=int(h), W=int(w))) for n, t, d in SCORER_OUTPUTS]
    params = {"mode": mode, "threshold": threshold, "sigma": repr(float(sigma))}
    if s.kind == "gpu":
        params["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"  # take GPU tensors as they are (DLPack)
    return (f'name: "exdd_scorer"\nbackend: "python"\nmax_batch_size: {int(s.max_batch)}\n'
            + _io("input", [("FEATURES", "TYPE_FP32", _dims((gh, gw, features["d"])))])
            + _io("output", outs) + _scheduling(s)
            + _warmup("FEATURES", "TYPE_FP32", _dims((gh, gw, features["d"])), "zero_data")
            + _parameters(params))


def ensemble_config(features: Dict, s: Serving) -> str:
    """config.pbtxt of the ensemble exdd: IMAGE -> exdd_features -> exdd_scorer."""
    h, w = features["input_size"]
    outs = [(n, t, d.format(H=int(h), W=int(w))) for n, t, d in SCORER_OUTPUTS]
    out_map = "".join(f'      output_map {{\n        key: "{n}"\n        value: "{n}"\n      }}\n' for n, _, _ in outs)
    return (f'name: "exdd"\nplatform: "ensemble"\nmax_batch_size: {int(s.max_batch)}\n'
            + _io("input", [("IMAGE", "TYPE_UINT8", _dims((h, w, 3)))]) + _io("output", outs)
            + "ensemble_scheduling {\n  step [\n"
            + '    {\n      model_name: "exdd_features"\n      model_version: -1\n'
            + '      input_map {\n        key: "IMAGE"\n        value: "IMAGE"\n      }\n'
            + '      output_map {\n        key: "FEATURES"\n        value: "features"\n      }\n    },\n'
            + '    {\n      model_name: "exdd_scorer"\n      model_version: -1\n'
            + '      input_map {\n        key: "FEATURES"\n        value: "features"\n      }\n'
            + out_map + "    }\n  ]\n}\n")
