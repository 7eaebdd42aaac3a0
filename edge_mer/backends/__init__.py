"""Inference back-ends behind one interface (:class:`~edge_mer.backends.base.Model`):
ONNX Runtime (CPU, CUDA or TensorRT execution provider) and native TensorRT engines."""
