"""The record every dataset reader yields, and the reader interface.

A :class:`Clip` holds what pretraining may read: a stable id, the speaker, media paths, an optional
segment and an optional transcript. Labels are *not* on it: a reader returns them separately from
:meth:`DatasetReader.labels`, and preprocessing writes them to their own file (``labels.jsonl``), so
no pretraining loader can see a label by accident.

>>> clip = Clip(id="ravdess/03-01-05-02-01-01-12", dataset="ravdess", speaker="ravdess_actor12",
...             media={"audio": "/data/03-01-05-02-01-01-12.flac"})
>>> clip.streams_available()
('audio', 'text')
"""

from __future__ import annotations

import abc
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus")
VIDEO_EXTS = (".mp4", ".flv", ".avi", ".mov", ".mkv", ".webm")
MEDIA_EXTS = AUDIO_EXTS + VIDEO_EXTS


@dataclass(frozen=True)
class Clip:
    """One clip to preprocess; never carries an emotion label.

    ``media`` maps a role to a path: ``"audio"`` (decoded for log-mel and speech-to-text),
    ``"video"`` (decoded for face crops and landmarks; often the same file as ``"audio"``) and
    ``"landmarks_csv"`` (official per-frame landmark tracking, when a dataset ships it).
    ``start_s``/``end_s`` cut a segment out of longer media (CMU-MOSEI); None means the whole file.
    """

    id: str  # "<dataset>/<name>", unique across datasets and stable between runs
    dataset: str
    speaker: str  # speaker-independent folds split on this
    media: Mapping[str, str]
    transcript: Optional[str] = None  # from the dataset; None = none known (Vosk may fill it)
    start_s: Optional[float] = None
    end_s: Optional[float] = None
    meta: Mapping[str, object] = field(default_factory=dict)  # non-label facts (sentence code, ...)

    def streams_available(self) -> tuple[str, ...]:
        """Cache streams this clip's media can give (text needs a transcript or audio for ASR)."""
        out = []
        if "audio" in self.media:
            out.append("audio")
        if "video" in self.media:
            out += ["face", "landmarks"]
        if self.transcript is not None or "audio" in self.media:
            out.append("text")
        return tuple(out)


@dataclass(frozen=True)
class ScanFailure:
    """A file a reader found but could not turn into a clip (e.g. an unknown file name)."""

    path: str
    reason: str


class DatasetReader(abc.ABC):
    """Finds a dataset's clips under a root directory.

    ``clips()`` yields the clips in a stable order; ``labels()`` maps clip id to its label record
    (``{"label": ..., **extra}``) and is empty for unlabelled data; ``failures`` lists files that
    were seen but skipped, filled while ``clips()`` runs.
    """

    name: str = ""

    def __init__(self) -> None:
        self.failures: list[ScanFailure] = []

    @abc.abstractmethod
    def clips(self) -> Iterator[Clip]:
        ...

    def labels(self) -> dict[str, dict]:
        return {}


def sorted_media_files(root: str | os.PathLike, exts: tuple[str, ...] = MEDIA_EXTS) -> list[Path]:
    """All files under ``root`` with one of ``exts`` (case-insensitive), in a stable sorted order.
    Hidden files and our own temporary files are ignored. Symlinked folders are followed (a data
    tree assembled from links is common), each real folder once, so a link loop cannot recurse."""
    root = Path(root)
    out = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if fn.startswith("."):
                continue
            if Path(fn).suffix.lower() in exts:
                out.append(Path(dirpath) / fn)
    return sorted(out)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_id_part(text: str) -> str:
    """A clip-id component that is also a safe file name (no spaces, no '..')."""
    part = _UNSAFE.sub("_", text).strip("._")
    return part or "_"
