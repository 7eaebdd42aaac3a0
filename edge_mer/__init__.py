"""edge-mer: on-device multimodal emotion recognition.

The runtime package. It imports numpy, onnxruntime, OpenCV, PyAV, tokenizers and (optionally)
TensorRT, dlib, sounddevice and Vosk; it never imports torch (see tests/test_torch_free.py).
"""

__version__ = "0.1.0"

from edge_mer.errors import EdgeMerError  # noqa: E402
from edge_mer.modality import Modality  # noqa: E402

__all__ = ["EdgeMerError", "Modality", "__version__"]
