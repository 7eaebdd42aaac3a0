"""Recordings of one person for streaming evaluations: a speaker's clips joined in a random order
with pauses between them, written as a 16 kHz WAV that ``edge-mer run --audio`` replays, plus
where each clip lies in it.

A RAVDESS tree is found through :class:`training.data.ravdess.RavdessReader` (symlinked folders
are followed; an empty tree is an error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_mer.errors import EdgeMerError

LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
SAMPLE_RATE_HZ = 16000


@dataclass(frozen=True)
class LabelledClip:
    path: Path
    speaker: int
    label: str
    clip_id: str


@dataclass(frozen=True)
class Span:
    """Where a clip lies in a recording (seconds)."""

    clip: LabelledClip
    t_start_s: float
    t_end_s: float


@dataclass(frozen=True)
class Recording:
    path: Path
    speaker: int
    spans: tuple[Span, ...]

    @property
    def duration_s(self) -> float:
        return self.spans[-1].t_end_s if self.spans else 0.0


def ravdess_speech_clips(data: str | os.PathLike, actors: Sequence[int] | None = None,
                         per_actor: int = 0) -> list[LabelledClip]:
    """RAVDESS speech clips (audio) with their emotion, for ``actors`` (default: all found).
    ``data`` is the folder holding ``ravdess/audio_speech`` or that folder itself. ``per_actor``
    > 0 keeps that many clips per actor, taken round-robin over the emotions (quick runs, tests)."""
    from training.data.ravdess import RavdessReader, parse_ravdess_name

    root = Path(data)
    if (root / "ravdess" / "audio_speech").is_dir():
        root = root / "ravdess" / "audio_speech"
    if not root.is_dir():
        raise EdgeMerError(f"{root}: RAVDESS speech folder not found (pass the folder holding ravdess/audio_speech)")
    reader = RavdessReader(root)
    out = []
    for clip in reader.clips():
        if "audio" not in clip.media:
            continue
        name = parse_ravdess_name(clip.media["audio"])
        if actors is not None and name.actor not in actors:
            continue
        out.append(LabelledClip(Path(clip.media["audio"]), name.actor, name.emotion_name, clip.id))
    if not out:
        raise EdgeMerError(f"{root}: no RAVDESS speech clips for actors {list(actors) if actors else 'any'}")
    if per_actor > 0:
        out = [c for a in sorted({c.speaker for c in out})
               for c in _round_robin([c for c in out if c.speaker == a], per_actor, shift=a)]
    return out


def _round_robin(clips: list[LabelledClip], n: int, shift: int = 0) -> list[LabelledClip]:
    """``n`` clips, one emotion after another (starting ``shift`` emotions in, so that a few
    clips per actor still cover every emotion across actors)."""
    by_label: dict[str, list[LabelledClip]] = {}
    for c in sorted(clips, key=lambda c: c.clip_id):
        by_label.setdefault(c.label, []).append(c)
    queues = [by_label[k] for k in LABELS if k in by_label]
    if queues:
        shift %= len(queues)
        queues = queues[shift:] + queues[:shift]
    picked: list[LabelledClip] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: n - len(picked)]
        depth += 1
    return picked


def stream_order(speaker: int, n: int, seed: int) -> np.ndarray:
    """The order a speaker's clips are streamed in: a permutation fixed by (seed, speaker)."""
    return np.random.default_rng([seed, speaker]).permutation(n)


def write_recording(clips: Sequence[LabelledClip], out: str | os.PathLike, pause_s: float = 0.5,
                    lead_s: float = 0.5) -> Recording:
    """Join ``clips`` (in the given order) into one 16 kHz WAV: ``lead_s`` of silence, then each
    clip followed by ``pause_s`` of silence. Written atomically."""
    import soundfile as sf

    from edge_mer.io import atomic_open
    from edge_mer.media import load_audio

    if not clips:
        raise EdgeMerError(f"{out}: no clips to join")
    parts = [np.zeros(int(round(lead_s * SAMPLE_RATE_HZ)), np.float32)]
    spans = []
    t = lead_s
    pause = np.zeros(int(round(pause_s * SAMPLE_RATE_HZ)), np.float32)
    for clip in clips:
        wave = load_audio(clip.path, SAMPLE_RATE_HZ)
        spans.append(Span(clip, t, t + len(wave) / SAMPLE_RATE_HZ))
        parts += [wave, pause]
        t += (len(wave) + len(pause)) / SAMPLE_RATE_HZ
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as fh:
        sf.write(fh, np.clip(np.concatenate(parts), -1.0, 1.0), SAMPLE_RATE_HZ, format="WAV", subtype="PCM_16")
    return Recording(out, clips[0].speaker, tuple(spans))


def speaker_recording(clips: Sequence[LabelledClip], speaker: int, out: str | os.PathLike, seed: int,
                      pause_s: float = 0.5) -> Recording:
    """All of ``speaker``'s clips in their stream order (:func:`stream_order`), one recording."""
    mine = sorted((c for c in clips if c.speaker == speaker), key=lambda c: c.clip_id)
    order = stream_order(speaker, len(mine), seed)
    return write_recording([mine[i] for i in order], out, pause_s)
