"""RAVDESS (Livingstone & Russo 2018): file names ``MM-VV-EE-II-SS-RR-AA``.

modality (01 full AV, 02 video only, 03 audio only), vocal channel (01 speech, 02 song), emotion
(01 neutral ... 08 surprised), intensity (01 normal, 02 strong), statement (01 "Kids are talking by
the door", 02 "Dogs are sitting by the door"), repetition (01, 02), actor (01-24; odd male, even
female).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
STATEMENTS = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
MODALITY_CODES = {1: "audio-visual", 2: "video-only", 3: "audio-only"}
_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


@dataclass(frozen=True)
class RavdessName:
    modality: int
    vocal_channel: int
    emotion: int  # 1..8, index into EMOTIONS is emotion - 1
    intensity: int
    statement: int
    repetition: int
    actor: int

    @property
    def clip_key(self) -> str:
        """The performance, independent of modality: ``VV-EE-II-SS-RR-AA``. An audio-only file
        (03-) and the audio-visual file (01-) of the same performance share it."""
        return f"{self.vocal_channel:02d}-{self.emotion:02d}-{self.intensity:02d}-{self.statement:02d}-{self.repetition:02d}-{self.actor:02d}"

    @property
    def emotion_name(self) -> str:
        return EMOTIONS[self.emotion - 1]

    @property
    def speaker(self) -> str:
        return f"ravdess_actor{self.actor:02d}"

    @property
    def transcript(self) -> str:
        return STATEMENTS[self.statement]


def parse_ravdess_name(path_or_name: str | Path) -> RavdessName:
    """Parse a RAVDESS file name (with or without directory and extension).

    >>> parse_ravdess_name("03-01-05-02-01-01-12.flac").emotion_name
    'angry'
    """
    stem = Path(str(path_or_name)).name.split(".")[0]
    m = _NAME.match(stem)
    if not m:
        raise ValueError(f"{path_or_name}: not a RAVDESS name (expected MM-VV-EE-II-SS-RR-AA)")
    parts = [int(g) for g in m.groups()]
    name = RavdessName(*parts)
    if name.modality not in MODALITY_CODES or name.vocal_channel not in (1, 2) or not 1 <= name.emotion <= 8 \
            or name.intensity not in (1, 2) or name.statement not in (1, 2) or name.repetition not in (1, 2) \
            or not 1 <= name.actor <= 24:
        raise ValueError(f"{path_or_name}: RAVDESS name has an out-of-range field")
    return name
