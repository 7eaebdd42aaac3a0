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
from typing import TYPE_CHECKING, Iterator

from training.data.base import VIDEO_EXTS, Clip, DatasetReader, ScanFailure, sorted_media_files

if TYPE_CHECKING:
    import numpy as np

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


# --------------------------------------------------------------------------- reader

# The 35 OpenFace action-unit columns of the per-clip CSV (17 intensities, then 18 presences).
AU_INTENSITY = ("01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23", "25", "26", "45")
AU_PRESENCE = ("01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23", "25", "26", "28", "45")
AU_COLUMNS = tuple(f"au_mean_AU{a}_r" for a in AU_INTENSITY) + tuple(f"au_mean_AU{a}_c" for a in AU_PRESENCE)


def load_action_units(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Per-clip OpenFace action units: ``{clip_key: float32[35]}`` (17 ``_r`` then 18 ``_c``).

    The CSV (``../shared/data/ravdess/openface_au/au_audio_per_clip.csv``) has one row per
    audio-visual clip named ``01-01-EE-II-SS-RR-AA``; the key is :attr:`RavdessName.clip_key`, which
    the audio-only file ``03-01-EE-II-SS-RR-AA`` of the same performance shares. The 259
    undocumented audio columns are not read.

    >>> aus = load_action_units("au_audio_per_clip.csv")                  # doctest: +SKIP
    >>> aus[parse_ravdess_name("03-01-05-02-01-01-12").clip_key].shape    # doctest: +SKIP
    (35,)
    """
    import csv

    import numpy as np

    from edge_mer.errors import MediaError

    path = Path(csv_path)
    if not path.is_file():
        raise MediaError(f"{path}: action-unit CSV not found")
    out: dict[str, np.ndarray] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("clip",) + AU_COLUMNS if c not in header]
        if missing:
            raise MediaError(f"{path}: not an action-unit CSV (missing columns {', '.join(missing[:3])}...)")
        cols = [header.index(c) for c in AU_COLUMNS]
        clip_col = header.index("clip")
        for line_no, row in enumerate(reader, start=2):
            try:
                key = parse_ravdess_name(row[clip_col]).clip_key
                values = np.array([float(row[c]) for c in cols], dtype=np.float32)
            except (ValueError, IndexError) as exc:
                raise MediaError(f"{path}:{line_no}: bad row ({exc})") from None
            if key in out:
                raise MediaError(f"{path}:{line_no}: clip {row[clip_col]} appears twice")
            out[key] = values
    return out


def load_landmark_csv(csv_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one official RAVDESS landmark-tracking CSV (OpenFace output: ``timestamp``,
    ``success``, ``x_0..x_67``, ``y_0..y_67`` columns; header names may carry spaces).

    Returns ``(t_s float32[N], points float32[N, 68, 2])`` in pixels, keeping only the frames
    OpenFace tracked (``success == 1``)."""
    import csv

    import numpy as np

    from edge_mer.errors import MediaError

    path = Path(csv_path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        try:
            t_col = header.index("timestamp")
            xs = [header.index(f"x_{i}") for i in range(68)]
            ys = [header.index(f"y_{i}") for i in range(68)]
        except ValueError:
            raise MediaError(f"{path}: not an OpenFace landmark CSV (needs timestamp, x_0..x_67, y_0..y_67)") from None
        ok_col = header.index("success") if "success" in header else None
        times, points = [], []
        for line_no, row in enumerate(reader, start=2):
            try:
                if ok_col is not None and float(row[ok_col]) < 0.5:
                    continue
                times.append(float(row[t_col]))
                points.append([[float(row[x]), float(row[y])] for x, y in zip(xs, ys)])
            except (ValueError, IndexError):
                raise MediaError(f"{path}:{line_no}: bad landmark row") from None
    return np.asarray(times, np.float32), np.asarray(points, np.float32).reshape(-1, 68, 2)


class RavdessReader(DatasetReader):
    """RAVDESS clips under ``root``: audio-only ``03-`` wav/flac, full audio-visual ``01-`` mp4 and
    video-only ``02-`` mp4, found recursively. One clip per file, id ``ravdess/<file stem>``.

    ``landmarks_dir``: where the official landmark-tracking CSVs (``<stem>.csv``) are, when the
    user has them; a video whose CSV is found gets ``media["landmarks_csv"]``. Files whose names do
    not parse are reported in :attr:`failures`, not silently dropped.
    """

    name = "ravdess"

    def __init__(self, root: str | Path, landmarks_dir: str | Path | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        self.landmarks_dir = Path(landmarks_dir) if landmarks_dir else None
        self._labels: dict[str, dict] = {}
        if not self.root.is_dir():
            from edge_mer.errors import MediaError

            raise MediaError(f"{self.root}: RAVDESS directory not found")

    def clips(self) -> Iterator[Clip]:
        self.failures = []
        paths = sorted_media_files(self.root)
        if not paths:
            from edge_mer.errors import MediaError

            raise MediaError(f"{self.root}: no RAVDESS media files (.wav/.flac/.mp4...) found under it")
        for path in paths:
            try:
                name = parse_ravdess_name(path.name)
            except ValueError as exc:
                self.failures.append(ScanFailure(str(path), str(exc).split(": ", 1)[-1]))
                continue
            is_video = path.suffix.lower() in VIDEO_EXTS
            if name.modality == 3 and is_video or name.modality != 3 and not is_video:
                self.failures.append(ScanFailure(str(path), f"modality {name.modality:02d} does not match a {path.suffix} file"))
                continue
            media: dict[str, str] = {}
            if name.modality in (1, 3):
                media["audio"] = str(path)
            if name.modality in (1, 2):
                media["video"] = str(path)
                csv_path = (self.landmarks_dir or path.parent) / f"{path.stem}.csv"
                if csv_path.is_file():
                    media["landmarks_csv"] = str(csv_path)
            clip_id = f"ravdess/{path.stem}"
            self._labels[clip_id] = {
                "label": name.emotion_name,
                "emotion": name.emotion,
                "intensity": name.intensity,
            }
            yield Clip(
                id=clip_id,
                dataset="ravdess",
                speaker=name.speaker,
                media=media,
                # RAVDESS actors speak one of two fixed statements; in song (02) they sing them.
                transcript=name.transcript,
                meta={"clip_key": name.clip_key, "statement": name.statement, "vocal_channel": name.vocal_channel},
            )

    def labels(self) -> dict[str, dict]:
        if not self._labels:
            for _ in self.clips():
                pass
        return dict(self._labels)
