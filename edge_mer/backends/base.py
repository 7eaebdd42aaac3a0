"""The one interface every inference back-end implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Model(Protocol):
    """A loaded network: named float inputs in, named outputs out (batch first).

    >>> model = OnnxModel.from_file("encoders/audio.int8.onnx", RuntimeCfg())   # doctest: +SKIP
    >>> model.run({"logmel": x})["feature"].shape                               # doctest: +SKIP
    (1, 512)
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
