"""CREMA-D (Cao et al. 2014): clips named ``ActorID_Sentence_EMO_Level``, e.g. ``1001_DFA_ANG_XX``.

91 actors (1001-1091) say 12 sentences in 6 emotions (ANG, DIS, FEA, HAP, NEU, SAD) at 4 levels
(LO, MD, HI, XX = unspecified). The release holds the same clips as flash video (``VideoFlash/*.flv``),
mp4, wav (``AudioWAV/``) and mp3 (``AudioMP3/``); files of one clip name are merged into one clip,
with the video taken from a video file and the audio from a lossless file when there is one.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

from edge_mer.errors import MediaError
from training.data.base import VIDEO_EXTS, Clip, DatasetReader, ScanFailure, sorted_media_files

EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
# Which file of a clip gives its audio: lossless first, then the video's own track, then mp3.
_AUDIO_PREFERENCE = (".wav", ".flac", ".mp4", ".flv", ".mp3")


def parse_crema_name(path_or_name: str | Path) -> tuple[int, str, str, str]:
    """``1001_DFA_ANG_XX.flv`` -> ``(1001, "DFA", "ANG", "XX")``; ValueError if it does not parse.

    >>> parse_crema_name("1001_DFA_ANG_XX.flv")
    (1001, 'DFA', 'ANG', 'XX')
    """
    stem = Path(str(path_or_name)).name.split(".")[0]
    m = _NAME.match(stem)
    if not m:
        raise ValueError(f"{path_or_name}: not a CREMA-D name (expected ActorID_Sentence_EMO_Level)")
    actor, sentence, emo, level = int(m.group(1)), m.group(2), m.group(3), m.group(4)
    if sentence not in SENTENCES or emo not in EMOTIONS or level not in LEVELS:
        raise ValueError(f"{path_or_name}: CREMA-D name has an unknown sentence, emotion or level code")
    return actor, sentence, emo, level


class CremaDReader(DatasetReader):
    """CREMA-D clips found recursively under ``root`` (flv, mp4, wav, mp3). Id ``crema-d/<name>``,
    speaker ``crema-d_<actor>``, transcript from the sentence code, label = intended emotion.

    ``votes_tsv``: optional table with ``clip`` and ``crowd_vote_*`` columns (as
    ``../shared/data/crema-d/labels.tsv``); its votes are added to the label records.
    """

    name = "crema-d"

    def __init__(self, root: str | Path, votes_tsv: str | Path | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        if votes_tsv is None and (self.root / "labels.tsv").is_file():
            votes_tsv = self.root / "labels.tsv"
        self.votes_tsv = Path(votes_tsv) if votes_tsv else None
        self._labels: dict[str, dict] = {}
        if not self.root.is_dir():
            raise MediaError(f"{self.root}: CREMA-D directory not found")

    def _votes(self) -> dict[str, dict]:
        if self.votes_tsv is None:
            return {}
        with self.votes_tsv.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows and "clip" not in rows[0]:
            raise MediaError(f"{self.votes_tsv}: no 'clip' column")
        return {r["clip"]: {k: v for k, v in r.items() if k.startswith("crowd_vote")} for r in rows}

    def clips(self) -> Iterator[Clip]:
        self.failures = []
        groups: dict[str, list[Path]] = {}
        for path in sorted_media_files(self.root):
            try:
                parse_crema_name(path.name)
            except ValueError as exc:
                self.failures.append(ScanFailure(str(path), str(exc).split(": ", 1)[-1]))
                continue
            groups.setdefault(path.stem, []).append(path)
        votes = self._votes()
        for stem in sorted(groups):
            actor, sentence, emo, level = parse_crema_name(stem)
            files = {p.suffix.lower(): p for p in groups[stem]}
            media: dict[str, str] = {}
            video = next((files[e] for e in (".mp4", ".flv") + VIDEO_EXTS if e in files), None)
            if video is not None:
                media["video"] = str(video)
            audio = next((files[e] for e in _AUDIO_PREFERENCE if e in files), None)
            if audio is not None:
                media["audio"] = str(audio)
            clip_id = f"crema-d/{stem}"
            self._labels[clip_id] = {"label": EMOTIONS[emo], "level": LEVELS[level], **votes.get(stem, {})}
            yield Clip(
                id=clip_id,
                dataset="crema-d",
                speaker=f"crema-d_{actor}",
                media=media,
                transcript=SENTENCES[sentence],
                meta={"sentence": sentence},
            )

    def labels(self) -> dict[str, dict]:
        if not self._labels:
            for _ in self.clips():
                pass
        return dict(self._labels)
