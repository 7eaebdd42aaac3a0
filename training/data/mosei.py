"""CMU-MOSEI (Zadeh et al. 2018) from the CMU Multimodal SDK's computational sequences.

A computational sequence (``.csd``) is an HDF5 file with one top-level group named after the
sequence, holding ``data/<video_id>/features`` and ``data/<video_id>/intervals`` (``[n, 2]``
seconds) and a ``metadata`` group. This reader uses:

- the labels sequence (``*Labels*.csd``): one row per utterance segment, 7 numbers = sentiment
  then happy, sad, anger, surprise, disgust, fear intensities (0-3). An emotion is present when its
  intensity is > 0 (multi-label, as in the paper and the SDK's convention);
- the timestamped words (``*TimestampedWords*.csd``): one byte string per word, ``sp`` = pause;
  a segment's transcript is the words whose midpoint lies inside it;
- the standard folds: the SDK's ``cmu_mosei_std_folds.py`` (read with ``ast``, never executed) or a
  JSON file ``{"train": [...], "valid": [...], "test": [...]}`` of video ids;
- raw media when the user has it: ``<video_id>.mp4`` (video + audio) and/or ``<video_id>.wav``,
  anywhere under the root; segments are cut from them by time.

One clip per labelled segment, id ``mosei/<video_id>/<k>`` (k = segment row), speaker
``mosei_<video_id>`` (a MOSEI video has one speaker).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from edge_mer.errors import MediaError
from training.data.base import AUDIO_EXTS, VIDEO_EXTS, Clip, DatasetReader, sorted_media_files

EMOTIONS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
FOLDS = ("train", "valid", "test")
_FOLD_NAMES = {"standard_train_fold": "train", "standard_valid_fold": "valid", "standard_test_fold": "test"}


def read_csd(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{video_id: (features, intervals)}`` of one computational sequence."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: computational sequence not found")
    try:
        with h5py.File(path, "r") as fh:
            roots = list(fh.keys())
            if len(roots) != 1 or "data" not in fh[roots[0]]:
                raise MediaError(f"{path}: not a CMU SDK computational sequence (expected one top group with 'data')")
            data = fh[roots[0]]["data"]
            out = {}
            for vid in data:
                entry = data[vid]
                if "features" not in entry or "intervals" not in entry:
                    raise MediaError(f"{path}: entry '{vid}' lacks features or intervals")
                feats, intervals = entry["features"][()], np.asarray(entry["intervals"][()], dtype=np.float64)
                if intervals.ndim != 2 or intervals.shape[1] != 2 or len(feats) != len(intervals):
                    raise MediaError(f"{path}: entry '{vid}' has {len(feats)} features but intervals {intervals.shape}")
                out[vid] = (feats, intervals)
            return out
    except OSError as exc:
        raise MediaError(f"{path}: cannot read as HDF5 ({exc})") from None


def read_csd_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata`` group of a computational sequence as strings."""
    import h5py

    with h5py.File(path, "r") as fh:
        root = fh[list(fh.keys())[0]]
        if "metadata" not in root:
            return {}
        out = {}
        for key, ds in root["metadata"].items():
            value = ds[()]
            value = value[0] if getattr(value, "shape", ()) else value
            out[key] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return out


def load_folds(path: str | Path) -> dict[str, str]:
    """``{video_id: "train" | "valid" | "test"}`` from the SDK's folds file or a JSON file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    folds: dict[str, list] = {}
    if path.suffix == ".json":
        folds = {k: v for k, v in json.loads(text).items() if k in FOLDS}
    else:
        for node in ast.parse(text, filename=str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                name = _FOLD_NAMES.get(node.targets[0].id)
                if name:
                    folds[name] = ast.literal_eval(node.value)
    if not folds:
        raise MediaError(f"{path}: no standard train/valid/test folds found")
    out: dict[str, str] = {}
    for split, vids in folds.items():
        for vid in vids:
            if out.get(vid, split) != split:
                raise MediaError(f"{path}: video {vid} is in both {out[vid]} and {split}")
            out[vid] = split
    return out


def _find(root: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        hits = sorted(root.rglob(pattern))
        if hits:
            return hits[0]
    return None


def _word(value: object) -> str:
    value = value[0] if isinstance(value, np.ndarray) else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class MoseiReader(DatasetReader):
    """CMU-MOSEI segments from the SDK's ``.csd`` files under ``root`` (see the module docstring).
    Explicit paths override the search for ``*Labels*.csd``, ``*TimestampedWords*.csd`` and
    ``*folds*.py|json``."""

    name = "mosei"

    def __init__(self, root: str | Path, labels_csd: str | Path | None = None, words_csd: str | Path | None = None,
                 folds: str | Path | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise MediaError(f"{self.root}: CMU-MOSEI directory not found")
        self.labels_csd = Path(labels_csd) if labels_csd else _find(self.root, ("*Labels*.csd",))
        if self.labels_csd is None:
            raise MediaError(f"{self.root}: no labels sequence (*Labels*.csd) found")
        self.words_csd = Path(words_csd) if words_csd else _find(self.root, ("*TimestampedWords*.csd", "*Words*.csd"))
        self.folds_path = Path(folds) if folds else _find(self.root, ("*folds*.py", "*folds*.json"))
        self._labels: dict[str, dict] = {}

    def clips(self) -> Iterator[Clip]:
        self.failures = []
        segments = read_csd(self.labels_csd)
        words = read_csd(self.words_csd) if self.words_csd else {}
        folds = load_folds(self.folds_path) if self.folds_path else {}
        media_by_vid: dict[str, dict[str, str]] = {}
        for path in sorted_media_files(self.root):
            entry = media_by_vid.setdefault(path.stem, {})
            if path.suffix.lower() in VIDEO_EXTS:
                entry.setdefault("video", str(path))
                entry.setdefault("audio", str(path))
            elif path.suffix.lower() in AUDIO_EXTS:
                entry["audio"] = str(path)  # a separate audio file beats the video's own track
        for vid in sorted(segments):
            feats, intervals = segments[vid]
            if feats.ndim != 2 or feats.shape[1] != 7:
                raise MediaError(f"{self.labels_csd}: '{vid}' labels have shape {feats.shape}, expected [n, 7]")
            w_feats, w_int = words.get(vid, (None, None))
            for k, (row, (start, end)) in enumerate(zip(feats, intervals)):
                transcript = None
                if w_feats is not None:
                    mid = w_int.mean(axis=1)
                    inside = (mid >= start) & (mid < end)
                    tokens = [_word(w) for w in w_feats[inside]]
                    transcript = " ".join(t for t in tokens if t != "sp") or None
                clip_id = f"mosei/{vid}/{k}"
                self._labels[clip_id] = {
                    "label": [e for e, v in zip(EMOTIONS, row[1:]) if v > 0],
                    "intensity": {e: float(v) for e, v in zip(EMOTIONS, row[1:])},
                    "sentiment": float(row[0]),
                    "fold": folds.get(vid),
                }
                yield Clip(
                    id=clip_id,
                    dataset="mosei",
                    speaker=f"mosei_{vid}",
                    media=dict(media_by_vid.get(vid, {})),
                    transcript=transcript,
                    start_s=float(start),
                    end_s=float(end),
                    meta={"video_id": vid, "segment": k},
                )

    def labels(self) -> dict[str, dict]:
        if not self._labels:
            for _ in self.clips():
                pass
        return dict(self._labels)
