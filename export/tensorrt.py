"""ONNX -> TensorRT engine (fp16, one optimisation profile for batch 1..N), via the Python API or trtexec."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from typing import Optional, Tuple

from .onnx_export import INPUT_NAME

NO_TENSORRT = (
    "TensorRT is not available here: neither the 'tensorrt' Python package nor 'trtexec' on PATH. "
    "Build the engine on the GPU machine that will serve it (an engine is specific to its GPU and "
    "TensorRT version), e.g. inside nvcr.io/nvidia/tritonserver:<yy.mm>-py3, or `pip install tensorrt` "
    "there."
)


class TensorRTUnavailable(RuntimeError):
    """Neither the TensorRT Python API nor trtexec can be found."""


class TensorRTBuildError(RuntimeError):
    """TensorRT was found but could not build the engine."""


def which_builder() -> Optional[str]:
    """'python' when the tensorrt package imports, 'trtexec' when it is on PATH, else None."""
    if importlib.util.find_spec("tensorrt") is not None:
        return "python"
    if shutil.which("trtexec"):
        return "trtexec"
    return None


def _shapes(input_hw: Tuple[int, int], max_batch: int) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """min / opt / max input shapes of the profile."""
    h, w = input_hw
    return (1, h, w, 3), (max(1, max_batch // 2), h, w, 3), (max_batch, h, w, 3)


def build_python(
    onnx_path: str,
    engine_path: str,
    input_hw: Tuple[int, int],
    max_batch: int,
    fp16: bool = True,
    workspace_gib: float = 4.0,
) -> str:
    """Build with the TensorRT Python API; returns engine_path."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"{onnx_path}: TensorRT could not parse the ONNX: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *_shapes(input_hw, max_batch))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise TensorRTBuildError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    with open(engine_path, "wb") as f:
        f.write(bytes(engine))
    return engine_path


def build_trtexec(
    onnx_path: str, engine_path: str, input_hw: Tuple[int, int], max_batch: int, fp16: bool = True
) -> str:
    """Build with trtexec; returns engine_path."""
    mn, op, mx = (("x".join(str(v) for v in s)) for s in _shapes(input_hw, max_batch))
    cmd = [
        shutil.which("trtexec") or "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--minShapes={INPUT_NAME}:{mn}",
        f"--optShapes={INPUT_NAME}:{op}",
        f"--maxShapes={INPUT_NAME}:{mx}",
    ]
    if fp16:
        cmd.append("--fp16")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.isfile(engine_path):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise TensorRTBuildError(f"trtexec failed (exit {proc.returncode}) on {onnx_path}:\n{tail}")
    return engine_path


def build_engine(onnx_path: str, engine_path: str, input_hw: Tuple[int, int], max_batch: int, fp16: bool = True) -> str:
    """Build a TensorRT engine with whichever builder is present; TensorRTUnavailable when none is."""
    kind = which_builder()
    if kind is None:
        raise TensorRTUnavailable(NO_TENSORRT)
    os.makedirs(os.path.dirname(os.path.abspath(engine_path)), exist_ok=True)
    if kind == "python":
        return build_python(onnx_path, engine_path, input_hw, max_batch, fp16)
    return build_trtexec(onnx_path, engine_path, input_hw, max_batch, fp16)
