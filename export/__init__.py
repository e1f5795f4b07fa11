"""Export and serving: ONNX / TensorRT export, Triton model-repository assembly, a local Triton server."""
