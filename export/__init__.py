"""Export of the feature extractor: ONNX (fp32 / fp16 / bf16 check / int8) and TensorRT engines."""
