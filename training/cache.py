"""The preprocessed four-stream cache: layout, writing helpers, and the reader API.

Layout (``CACHE/``; every file is written atomically, write-then-rename)::

    cache_manifest.json   {"format": 1,
                           "settings": {"audio": {...}, "face": {...}, "landmarks": {...}, "text": {...}},
                           "streams": [...requested streams...],
                           "versions": {"edge-mer", "torch", "torchaudio", "facenet-pytorch", "dlib", "av"},
                           "datasets": [...], "counts": {"done": n, "failed": n, "per_stream": {stream: n}}}
    clips/<clip_id>.npz   one per done clip; a stream the clip lacks is an absent key:
                            "logmel"      float32 [n_mels, T]  training.features.log_mel_torch, 16 kHz mono
                            "face"        uint8 [N, S, S, 3]   RGB crops, S = face.image_size
                            "face_t"      float32 [N]          seconds from the clip start
                            "landmarks"   float32 [N, 68, 2]   pixels in the original frame, iBUG order
                            "landmarks_t" float32 [N]
                            "text"        0-d str array        transcript
                            "duration_s"  0-d float64          clip length in seconds
    clips/<clip_id>.json  the clip's index row (below); its presence marks the clip done
    labels/<clip_id>.json the clip's label record, for labelled datasets only
    failures/<key>.json   one failed clip or unreadable file
    index.jsonl           {"id", "dataset", "speaker", "media": {...}, "streams": [...],
                           "text_source": "dataset" | "vosk" | null}     <- never a label
    labels.jsonl          {"id", "label": str | list, ...}                <- kept apart
    failures.jsonl        {"id" or "path", "stage", "reason"}

Clip ids look like ``ravdess/03-01-05-02-01-01-12`` or ``crema-d/1001_DFA_ANG_XX``; the part
before the first ``/`` is the dataset. The per-clip json files are the source of truth (each shard
of a distributed run writes only its own clips); the three ``.jsonl`` files and the manifest's
counts are rebuilt from them by :func:`merge` at the end of every run.

>>> cache = open_cache("cache/ravdess_audio")                     # doctest: +SKIP
>>> arrays = cache.load(cache.ids[0]); arrays["logmel"].shape      # doctest: +SKIP
(128, 354)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge_mer.errors import EdgeMerError
from edge_mer.io import atomic_open, atomic_write_text

FORMAT = 1
MANIFEST = "cache_manifest.json"
STREAMS = ("audio", "face", "landmarks", "text")
# The npz keys each stream contributes.
STREAM_KEYS = {
    "audio": ("logmel",),
    "face": ("face", "face_t"),
    "landmarks": ("landmarks", "landmarks_t"),
    "text": ("text",),
}


class CacheError(EdgeMerError):
    """A cache directory is missing, of an unknown format, or built with other settings."""


def _check_id(clip_id: str) -> None:
    parts = clip_id.split("/")
    if len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        raise CacheError(f"bad clip id '{clip_id}' (expected '<dataset>/<name>')")


def clip_npz_path(root: str | os.PathLike, clip_id: str) -> Path:
    _check_id(clip_id)
    return Path(root) / "clips" / f"{clip_id}.npz"


def clip_record_path(root: str | os.PathLike, clip_id: str) -> Path:
    _check_id(clip_id)
    return Path(root) / "clips" / f"{clip_id}.json"


def label_path(root: str | os.PathLike, clip_id: str) -> Path:
    _check_id(clip_id)
    return Path(root) / "labels" / f"{clip_id}.json"


def failure_path(root: str | os.PathLike, clip_id: str | None = None, path: str | None = None) -> Path:
    """Where one failure is recorded: per clip id, or per unreadable file (by a hash of its path)."""
    if clip_id is not None:
        _check_id(clip_id)
        return Path(root) / "failures" / f"{clip_id}.json"
    digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:16]
    return Path(root) / "failures" / "_files" / f"{digest}.json"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")


def write_clip(root: str | os.PathLike, clip_id: str, arrays: dict[str, np.ndarray], record: dict) -> None:
    """Write a done clip: its arrays first, then its index row (which marks it done), so a crash
    between the two leaves the clip to be redone rather than half-present."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_open(clip_npz_path(root, clip_id), "wb") as fh:
        fh.write(buf.getbuffer())
    write_json(clip_record_path(root, clip_id), record)


def _iter_json(folder: Path) -> Iterator[dict]:
    if not folder.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.endswith(".json") and not fn.startswith("."):
                with open(Path(dirpath) / fn, encoding="utf-8") as fh:
                    yield json.load(fh)


def read_manifest(root: str | os.PathLike) -> dict | None:
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{path}: cache format {manifest.get('format')!r}, this code reads format {FORMAT}")
    return manifest


def merge(root: str | os.PathLike) -> dict:
    """Rebuild ``index.jsonl``, ``labels.jsonl``, ``failures.jsonl`` and the manifest's counts
    from the per-clip files; returns the counts. Safe to run at any time (shards call it as they
    finish; the last one to finish leaves the complete view)."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        raise CacheError(f"{root}: no {MANIFEST} (not a cache directory)")
    rows = sorted(_iter_json(root / "clips"), key=lambda r: r["id"])
    done_ids = {r["id"] for r in rows}
    labels = sorted((r for r in _iter_json(root / "labels") if r["id"] in done_ids), key=lambda r: r["id"])
    failures = sorted(_iter_json(root / "failures"), key=lambda r: r.get("id") or r.get("path", ""))
    per_stream = {s: sum(1 for r in rows if s in r["streams"]) for s in STREAMS}
    counts = {"done": len(rows), "failed": len(failures), "per_stream": per_stream}
    for name, items in (("index.jsonl", rows), ("labels.jsonl", labels), ("failures.jsonl", failures)):
        atomic_write_text(root / name, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in items))
    manifest["counts"] = counts
    manifest["datasets"] = sorted({r["dataset"] for r in rows} | set(manifest.get("datasets", [])))
    write_json(root / MANIFEST, manifest)
    return counts


class Cache:
    """Read access to a preprocessed cache (see the module docstring for the layout).

    ``ids`` lists the done clips (sorted); ``index(id)`` is the clip's row (never a label);
    ``load(id)`` its arrays; ``labels()`` maps id to label for the labelled clips; ``settings`` the
    config sections the cache was built with.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if manifest is None:
            raise CacheError(f"{self.root}: not a preprocessed cache (no {MANIFEST})")
        self.manifest = manifest
        self.settings: dict[str, dict] = manifest["settings"]
        index_file = self.root / "index.jsonl"
        if not index_file.is_file():
            raise CacheError(f"{index_file}: missing (run python -m training.preprocess --merge-only)")
        self._rows: dict[str, dict] = {}
        with index_file.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    self._rows[row["id"]] = row
        self.ids: list[str] = sorted(self._rows)

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, clip_id: str) -> dict:
        try:
            return self._rows[clip_id]
        except KeyError:
            raise CacheError(f"{self.root}: no clip '{clip_id}' in the cache") from None

    def load(self, clip_id: str) -> dict[str, np.ndarray]:
        """The clip's arrays (see the layout); absent streams are absent keys."""
        self.index(clip_id)
        with np.load(clip_npz_path(self.root, clip_id), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def labels(self) -> dict[str, Any]:
        """``{clip_id: label}`` (a class name, or a list of names for multi-label datasets)."""
        return {r["id"]: r["label"] for r in self.label_records()}

    def label_records(self) -> list[dict]:
        """The full label rows (``label`` plus dataset-specific extras such as intensity)."""
        path = self.root / "labels.jsonl"
        if not path.is_file():
            return []
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def failures(self) -> list[dict]:
        path = self.root / "failures.jsonl"
        if not path.is_file():
            return []
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]


def open_cache(root: str | os.PathLike) -> Cache:
    """Open a cache directory written by ``python -m training.preprocess``."""
    return Cache(root)
