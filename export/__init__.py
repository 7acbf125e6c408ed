"""Exporters: ``python -m export.to_onnx`` (checkpoint -> ONNX) and ``python -m export.to_trt`` (ONNX -> TensorRT)."""
