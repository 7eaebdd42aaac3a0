"""The four streams edge-mer fuses. Every per-modality container is a ``dict[Modality, ...]``;
a missing modality is an absent key, never a zero tensor."""

from __future__ import annotations

from enum import Enum


class Modality(str, Enum):
    """A stream of the person in front of the device.

    >>> Modality("audio") is Modality.AUDIO
    True
    """

    FACE = "face"
    LANDMARKS = "landmarks"
    AUDIO = "audio"
    TEXT = "text"

    def __str__(self) -> str:  # "audio", not "Modality.AUDIO", in messages and JSON
        return self.value


def parse_modalities(names: str | list[str] | tuple[str, ...]) -> tuple[Modality, ...]:
    """``"audio,face"`` or ``["audio", "face"]`` -> ``(Modality.AUDIO, Modality.FACE)``."""
    if isinstance(names, str):
        names = [n for n in names.replace("+", ",").split(",") if n.strip()]
    out = []
    for name in names:
        try:
            out.append(Modality(name.strip()))
        except ValueError:
            valid = ", ".join(m.value for m in Modality)
            raise ValueError(f"unknown modality '{name}' (known: {valid})") from None
    return tuple(out)
