"""Export: PyTorch networks to verified ONNX files, quantised variants, TensorRT engines and the
model bundle the runtime reads. This package may import both torch and the runtime (``edge_mer``);
the runtime never imports it."""
