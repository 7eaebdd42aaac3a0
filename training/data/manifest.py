"""A generic manifest of one's own recordings, so pretraining can start from any folder of media.

CSV (header row) or JSONL (one object per line) with these columns / keys:

=============  ========  ==========================================================
``path``       required  media file, relative to the manifest's folder or absolute
``speaker``    required  who speaks (speaker-independent folds split on it)
``transcript`` optional  what is said; empty = unknown (Vosk may fill it)
``label``      optional  a class name, or for multi-label a list (JSONL) or
                         ``a;b`` (CSV); empty = unlabelled
``id``         optional  clip name; default: the path without its extension
=============  ========  ==========================================================

Clip ids are ``<dataset>/<id>`` with ``<dataset>`` the manifest's file stem (or ``name``).
A video file gives both the ``video`` and the ``audio`` stream; an audio file gives ``audio``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from edge_mer.errors import MediaError
from training.data.base import AUDIO_EXTS, VIDEO_EXTS, Clip, DatasetReader, safe_id_part

REQUIRED = ("path", "speaker")
KNOWN = ("path", "speaker", "transcript", "label", "id")


class ManifestReader(DatasetReader):
    """Clips listed in a CSV or JSONL manifest (see the module docstring for the columns)."""

    def __init__(self, manifest: str | Path, name: str | None = None) -> None:
        super().__init__()
        self.path = Path(manifest)
        self.name = safe_id_part(name or self.path.stem)
        self._labels: dict[str, dict] = {}
        if not self.path.is_file():
            raise MediaError(f"{self.path}: manifest not found")

    def _rows(self) -> Iterator[tuple[int, dict]]:
        suffix = self.path.suffix.lower()
        with self.path.open(newline="", encoding="utf-8") as fh:
            if suffix == ".csv":
                reader = csv.DictReader(fh)
                missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
                if missing:
                    raise MediaError(f"{self.path}: manifest lacks column(s) {', '.join(missing)}")
                for line_no, row in enumerate(reader, start=2):
                    label = (row.get("label") or "").strip()
                    row["label"] = [p for p in label.split(";") if p] if ";" in label else label or None
                    yield line_no, row
            elif suffix in (".jsonl", ".ndjson"):
                for line_no, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise MediaError(f"{self.path}:{line_no}: not JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise MediaError(f"{self.path}:{line_no}: expected an object per line")
                    yield line_no, row
            else:
                raise MediaError(f"{self.path}: manifest must be .csv or .jsonl, got '{suffix}'")

    def clips(self) -> Iterator[Clip]:
        self.failures = []
        self._labels = {}  # re-read from the file each time: labels may be added after preprocessing
        seen: set[str] = set()
        for line_no, row in self._rows():
            where = f"{self.path}:{line_no}"
            for key in REQUIRED:
                if not str(row.get(key) or "").strip():
                    raise MediaError(f"{where}: '{key}' is empty")
            unknown = sorted(set(row) - set(KNOWN))
            if unknown:
                raise MediaError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(KNOWN)})")
            media_path = Path(str(row["path"]))
            if not media_path.is_absolute():
                media_path = self.path.parent / media_path
            ext = media_path.suffix.lower()
            if ext in VIDEO_EXTS:
                media = {"audio": str(media_path), "video": str(media_path)}
            elif ext in AUDIO_EXTS:
                media = {"audio": str(media_path)}
            else:
                raise MediaError(f"{where}: {media_path.name}: unknown media type '{ext}'")
            raw_id = str(row.get("id") or Path(str(row["path"])).with_suffix("").as_posix())
            clip_id = f"{self.name}/" + "/".join(safe_id_part(p) for p in raw_id.split("/") if p not in ("", ".", ".."))
            if clip_id in seen:
                raise MediaError(f"{where}: clip id '{clip_id}' appears twice")
            seen.add(clip_id)
            label = row.get("label")
            if label not in (None, "", []):
                if not isinstance(label, (str, list)):
                    raise MediaError(f"{where}: label must be a string or a list, got {type(label).__name__}")
                self._labels[clip_id] = {"label": label}
            transcript = row.get("transcript")
            yield Clip(
                id=clip_id,
                dataset=self.name,
                speaker=str(row["speaker"]).strip(),
                media=media,
                transcript=str(transcript).strip() if transcript not in (None, "") else None,
            )

    def labels(self) -> dict[str, dict]:
        """``{clip_id: {"label": ...}}`` of the labelled rows (read from the file if ``clips()``
        has not run yet); cheap: the manifest alone is read, no media."""
        if not self._labels:
            for _ in self.clips():
                pass
        return dict(self._labels)
