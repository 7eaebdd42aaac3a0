"""The streaming runtime behind ``edge-mer run``: sources -> windower -> stages -> fusion -> sinks.

Each piece is usable and testable alone: :mod:`~edge_mer.stream.sources` yields timestamped
:class:`~edge_mer.stream.sources.Frame` and :class:`~edge_mer.stream.sources.AudioChunk` items,
:class:`~edge_mer.stream.windower.Windower` cuts them into synchronised windows,
:mod:`~edge_mer.stream.stages` turns a window into per-modality features,
:mod:`~edge_mer.stream.fusion` into a smoothed prediction and an event, and
:mod:`~edge_mer.stream.sinks` writes the events out. :mod:`~edge_mer.stream.app` wires them.
"""
