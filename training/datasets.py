"""Torch datasets over the preprocessed cache and the feature files.

Pretraining reads :class:`ContrastiveDataset`, which by construction carries no labels: it is
built from clip ids and per-stream arrays only, its items hold nothing but stream inputs, and
:func:`check_label_free` rejects any batch that has anything else. Labels exist only in
:class:`LabelledDataset`, which the supervised upper bound and the probes use, never pretraining.

Streams and their inputs (one item: ``{stream: {input_name: Tensor}}``; a stream the clip lacks is
an absent key):

- ``audio``: ``logmel`` ``[n_mels, crop_frames]``, a random crop (the same time span for every
  time-based stream of the clip); ``audio_view2``: a second, independent crop of the same clip
  (the audio-only self-supervised baseline), encoded by the audio encoder.
- ``face``: ``face`` ``[frames, 3, S, S]`` crops inside the span; ``landmarks``: ``landmarks``
  ``[frames, 51, 2]`` (jaw dropped, min-max normalised per clip); ``text``: ``input_ids`` and
  ``attention_mask`` ``[tokens]`` of the clip's transcript.
- any other stream: a per-clip feature vector ``x`` ``[D]`` (RAVDESS action units, CMU-MOSI).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edge_mer.errors import MediaError
from training.encoders.landmarks_stgcn import normalise_landmarks

log = logging.getLogger(__name__)

TIME_STREAMS = ("audio", "audio_view2", "face", "landmarks", "text")
# Keys that would mean a label slipped into a pretraining batch.
FORBIDDEN_KEYS = frozenset({"label", "labels", "y", "target", "targets", "emotion", "class", "sentiment"})


def actor_of(clip_id: str) -> int:
    """RAVDESS actor number of a clip id ``ravdess/03-01-05-02-01-01-12``."""
    return int(clip_id.rsplit("-", 1)[-1])


def ravdess_clip_key(clip_id: str) -> str:
    from training.data.ravdess import parse_ravdess_name

    return parse_ravdess_name(clip_id.split("/")[-1]).clip_key


@dataclass
class ClipStore:
    """In-memory arrays of the clips, per stream, keyed by clip id (no labels).

    ``logmels``: ``{id: float32 [n_mels, T]}``; ``vectors``: ``{stream: {id: float32 [D]}}``;
    ``media``: ``{id: {npz key: array}}`` for face, landmarks and text (raw-media smoke runs).
    """

    logmels: dict[str, np.ndarray] = field(default_factory=dict)
    vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    media: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    frames_per_s: float = 100.0  # log-mel frames per second (sample rate / hop)

    def streams_of(self, clip_id: str) -> set[str]:
        out = set()
        if clip_id in self.logmels:
            out |= {"audio", "audio_view2"}
        m = self.media.get(clip_id, {})
        if "face" in m and len(m["face"]):
            out.add("face")
        if "landmarks" in m and len(m["landmarks"]):
            out.add("landmarks")
        if "text" in m:
            out.add("text")
        out |= {s for s, table in self.vectors.items() if clip_id in table}
        return out

    def duration_s(self, clip_id: str) -> float:
        if clip_id in self.logmels:
            return self.logmels[clip_id].shape[1] / self.frames_per_s
        m = self.media.get(clip_id, {})
        if "duration_s" in m:
            return float(m["duration_s"])
        return 0.0


def load_cache_store(cache_dir: str | Path, streams: tuple[str, ...], ids: list[str] | None = None) -> tuple[ClipStore, list[str]]:
    """Read the given streams of a preprocessed cache into memory. Reads the cache's index and
    arrays only, never its labels. Returns the store and the clip ids read."""
    from training.cache import open_cache

    cache = open_cache(cache_dir)
    audio = cache.settings.get("audio", {})
    store = ClipStore(frames_per_s=audio.get("sample_rate_hz", 16000) / audio.get("hop_length", 160))
    wanted = ids if ids is not None else cache.ids
    for clip_id in wanted:
        arrays = cache.load(clip_id)
        if "audio" in streams and "logmel" in arrays:
            store.logmels[clip_id] = arrays["logmel"].astype(np.float32)
        keep = {k: arrays[k] for k in ("face", "face_t", "landmarks", "landmarks_t", "text", "duration_s") if k in arrays}
        if keep and any(s in streams for s in ("face", "landmarks", "text")):
            store.media[clip_id] = keep
    return store, list(wanted)


def _by_speaker(speaker_of: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for clip_id, spk in speaker_of.items():
        out.setdefault(spk, []).append(clip_id)
    return out


def speaker_logmel_stats(store: ClipStore, speaker_of: dict[str, str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{speaker: (mean, var)}`` per log-mel bin over all frames of that speaker's clips."""
    out = {}
    for spk, clips in _by_speaker(speaker_of).items():
        mels = [store.logmels[c] for c in clips if c in store.logmels]
        if mels:
            frames = np.concatenate(mels, axis=1).astype(np.float64)
            out[spk] = (frames.mean(axis=1), frames.var(axis=1))
    return out


def logmel_speaker_prior(store: ClipStore, speaker_of: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The log-mel statistics a per-user input normalisation starts from before it has heard the
    person ([n_mels] each): the mean of the speakers' means, and the spread expected about it
    (within a speaker plus between speakers' means). Exported with an encoder pretrained on
    per-speaker standardised log-mels (``train.speaker_norm``)."""
    stats = list(speaker_logmel_stats(store, speaker_of).values())
    if not stats:
        raise ValueError("logmel_speaker_prior: no speaker has log-mels")
    return pool_speaker_stats(np.stack([m for m, _ in stats]), np.stack([v for _, v in stats]))


def pool_speaker_stats(means: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-speaker means and variances [S, D] -> the population prior (mean, std) [D]: the mean of
    the speakers' means, and the spread a new speaker is expected to show about it (the average
    within-speaker variance plus the variance of the speakers' means). A constant dimension gets
    std 1."""
    std = np.sqrt(variances.mean(axis=0) + means.var(axis=0))
    return means.mean(axis=0), np.where(std < 1e-8, 1.0, std)


def normalise_per_speaker(store: ClipStore, speaker_of: dict[str, str], audio: bool = True) -> ClipStore:
    """A copy of ``store`` whose inputs are standardised per speaker, label-free: each log-mel bin
    by the mean and std over all frames of that speaker's clips (removes the voice's spectral
    envelope and the recording level), each feature-vector stream by that speaker's per-dimension
    mean and std (removes a face's resting action units). Clips without a speaker are dropped.
    Uses only the speaker's own unlabelled clips; the runtime's per-user running statistics
    (``runtime.user_norm``) are the online counterpart. ``audio=False`` keeps the log-mels as they
    are (an encoder trained on the raw scale, such as the Whisper trunk)."""
    out = ClipStore(frames_per_s=store.frames_per_s, media=store.media)
    by_speaker = _by_speaker(speaker_of)
    if not audio:
        out.logmels = {c: m for c, m in store.logmels.items() if speaker_of.get(c)}
    for spk, (mean, var) in (speaker_logmel_stats(store, speaker_of).items() if audio else ()):
        std = np.maximum(np.sqrt(var), 1e-3)[:, None]
        for c in by_speaker[spk]:
            if c in store.logmels:
                out.logmels[c] = ((store.logmels[c] - mean[:, None]) / std).astype(np.float32)
    for clips in by_speaker.values():
        for stream, table in store.vectors.items():
            rows = [c for c in clips if c in table]
            if not rows:
                continue
            x = np.stack([table[c] for c in rows]).astype(np.float64)
            mean, std = x.mean(axis=0), x.std(axis=0)
            std[std < 1e-6] = 1.0
            dest = out.vectors.setdefault(stream, {})
            for c, row in zip(rows, (x - mean) / std):
                dest[c] = row.astype(np.float32)
    return out


def load_action_unit_vectors(csv_path: str | Path, clip_ids: list[str]) -> dict[str, np.ndarray]:
    """``{clip id: float32[35]}`` for the RAVDESS clips that have action units."""
    from training.data.ravdess import load_action_units

    table = load_action_units(csv_path)
    out = {}
    for clip_id in clip_ids:
        key = ravdess_clip_key(clip_id)
        if key in table:
            out[clip_id] = table[key]
    return out


# --------------------------------------------------------------------------- CMU-MOSI

MOSI_STREAMS = {"mosi_text": ("text", "text"), "mosi_audio": ("audio", "audio"), "mosi_video": ("video", "video")}


def load_mosi(root: str | Path) -> dict[str, dict]:
    """CMU-MOSI feature triples (bc-LSTM release): ``{"train"|"test": {"ids", "video",
    "vectors": {stream: float32[N, D]}, "labels": int64[N]}}``. Rows of the three modality files
    are aligned; the utterance id comes from ``transcripts.csv`` through ``text_<split>.csv``."""
    root = Path(root)
    if not (root / "transcripts.csv").is_file():
        raise MediaError(f"{root}: not the CMU-MOSI feature folder (no transcripts.csv)")
    import csv

    with (root / "transcripts.csv").open(newline="", encoding="utf-8") as fh:
        utt_ids = [row[0] for row in csv.reader(fh)]
    out = {}
    for split in ("train", "test"):
        vectors, labels = {}, None
        for stream, (folder, prefix) in MOSI_STREAMS.items():
            path = root / folder / f"{prefix}_{split}0.csv"
            if not path.is_file():
                raise MediaError(f"{path}: missing CMU-MOSI feature file")
            table = np.loadtxt(path, delimiter=",", dtype=np.float64, converters=lambda s: float(s.strip('"')), encoding="utf-8")
            vectors[stream] = table[:, :-1].astype(np.float32)
            lab = table[:, -1].astype(np.int64)
            if labels is not None and not np.array_equal(labels, lab):
                raise MediaError(f"{path}: rows not aligned with the other CMU-MOSI modalities")
            labels = lab
        index = np.loadtxt(root / f"text_{split}.csv", delimiter=",", usecols=0, dtype=np.float64,
                           converters=lambda s: float(s.strip('"')), encoding="utf-8").astype(int)
        ids = [f"mosi/{utt_ids[i]}" for i in index]
        out[split] = {"ids": ids, "video": [i.split("/", 1)[1].rsplit("_", 1)[0] for i in ids], "vectors": vectors, "labels": labels}
    return out


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class CropSpec:
    crop_s: float = 2.0  # crop length in seconds, the same span for every time-based stream
    face_frames: int = 8  # face crops per item
    landmark_frames: int = 30  # landmark frames per item
    max_tokens: int = 64  # text tokens per item


def _frames_in_span(times: np.ndarray, t0: float, t1: float, n: int) -> np.ndarray:
    """``n`` indices spread uniformly over the frames inside [t0, t1) (the nearest frames when
    none fall inside)."""
    inside = np.nonzero((times >= t0) & (times < t1))[0]
    if len(inside) == 0:
        inside = np.argsort(np.abs(times - 0.5 * (t0 + t1)))[:1]
    return inside[np.linspace(0, len(inside) - 1, n).round().astype(int)]


class ContrastiveDataset(Dataset):
    """Label-free paired streams of the clips ``ids``: item ``i`` is ``{stream: {input: Tensor}}``.

    Crops are drawn from a generator seeded by ``(seed, epoch, i)``, so an epoch is the same
    whatever the worker layout and a resumed run repeats it exactly; ``fixed=True`` takes centred
    crops (validation).
    """

    def __init__(self, store: ClipStore, ids: list[str], streams: tuple[str, ...], crop: CropSpec,
                 seed: int = 0, fixed: bool = False) -> None:
        self.store, self.ids, self.streams, self.crop = store, list(ids), tuple(streams), crop
        self.seed, self.fixed, self.epoch = seed, fixed, 0
        self._tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if "text" in streams:
            from training.encoders.text_minilm import tokenize_texts

            with_text = [i for i in self.ids if "text" in store.media.get(i, {})]
            if with_text:
                ids_arr, mask = tokenize_texts([str(store.media[i]["text"]) for i in with_text], crop.max_tokens)
                self._tokens = {c: (ids_arr[k], mask[k]) for k, c in enumerate(with_text)}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def _audio_crop(self, logmel: np.ndarray, start_s: float) -> np.ndarray:
        n = int(round(self.crop.crop_s * self.store.frames_per_s))
        if logmel.shape[1] < n:
            # A clip shorter than the crop is repeated (wrap), keeping every batch the same size.
            logmel = np.pad(logmel, ((0, 0), (0, n - logmel.shape[1])), mode="wrap")
        start = min(int(round(start_s * self.store.frames_per_s)), logmel.shape[1] - n)
        return logmel[:, start:start + n]

    def __getitem__(self, i: int) -> dict[str, dict[str, torch.Tensor]]:
        clip_id = self.ids[i]
        rng = np.random.default_rng([self.seed, 0 if self.fixed else self.epoch + 1, i])
        slack = max(0.0, self.store.duration_s(clip_id) - self.crop.crop_s)
        t0 = 0.5 * slack if self.fixed else float(rng.uniform(0.0, slack))
        return self.item_at(i, t0, rng)

    def item_at(self, i: int, t0: float, rng: np.random.Generator | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Clip ``i``'s streams in the crop that starts ``t0`` seconds into the clip (the probes'
        windows over a whole clip); ``rng`` draws the second audio view's crop."""
        clip_id = self.ids[i]
        slack = max(0.0, self.store.duration_s(clip_id) - self.crop.crop_s)
        t1 = t0 + self.crop.crop_s
        have = self.store.streams_of(clip_id)
        item: dict[str, dict[str, torch.Tensor]] = {}
        for stream in self.streams:
            if stream not in have:
                continue
            if stream == "audio":
                item[stream] = {"logmel": torch.from_numpy(np.ascontiguousarray(self._audio_crop(self.store.logmels[clip_id], t0)))}
            elif stream == "audio_view2":
                # The second view gets its own crop: the two views of a clip share only the clip.
                t_other = 0.5 * slack if self.fixed or rng is None else float(rng.uniform(0.0, slack))
                item[stream] = {"logmel": torch.from_numpy(np.ascontiguousarray(self._audio_crop(self.store.logmels[clip_id], t_other)))}
            elif stream == "face":
                m = self.store.media[clip_id]
                idx = _frames_in_span(m["face_t"], t0, t1, self.crop.face_frames)
                crops = m["face"][idx].astype(np.float32) / 255.0  # [T, S, S, 3] uint8 -> [0, 1]
                item[stream] = {"face": torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))}
            elif stream == "landmarks":
                m = self.store.media[clip_id]
                pts = normalise_landmarks(m["landmarks"])  # per clip, as the paper does
                idx = _frames_in_span(m["landmarks_t"], t0, t1, self.crop.landmark_frames)
                item[stream] = {"landmarks": torch.from_numpy(np.ascontiguousarray(pts[idx]))}
            elif stream == "text":
                if clip_id in self._tokens:
                    ids_arr, mask = self._tokens[clip_id]
                    item[stream] = {"input_ids": torch.from_numpy(ids_arr), "attention_mask": torch.from_numpy(mask)}
            else:
                item[stream] = {"x": torch.from_numpy(np.asarray(self.store.vectors[stream][clip_id], dtype=np.float32))}
        return item


def collate_streams(items: list[dict[str, dict[str, torch.Tensor]]]) -> dict[str, dict]:
    """Stack items into ``{"inputs": {stream: {input: Tensor[B, ...]}}, "present": {stream:
    BoolTensor[B]}}``. A clip lacking a stream gets zeros there and ``present`` False, so the loss
    leaves it out of that stream's pairs."""
    streams = sorted({s for it in items for s in it}, key=lambda s: (s not in TIME_STREAMS, s))
    inputs: dict[str, dict[str, torch.Tensor]] = {}
    present: dict[str, torch.Tensor] = {}
    for stream in streams:
        template = next(it[stream] for it in items if stream in it)
        inputs[stream] = {
            name: torch.stack([it[stream][name] if stream in it else torch.zeros_like(t) for it in items])
            for name, t in template.items()
        }
        present[stream] = torch.tensor([stream in it for it in items], dtype=torch.bool)
    return {"inputs": inputs, "present": present}


def check_label_free(batch: dict) -> None:
    """Raise if a pretraining batch holds anything besides stream inputs and presence masks."""
    extra = set(batch) - {"inputs", "present"}
    bad = extra | {k for s in batch.get("inputs", {}).values() for k in s if k.lower() in FORBIDDEN_KEYS}
    bad |= {s for s in batch.get("inputs", {}) if s.lower() in FORBIDDEN_KEYS}
    if bad:
        raise ValueError(f"pretraining batch carries {sorted(bad)}: labels must never reach the contrastive path")


class LabelledDataset(Dataset):
    """SUPERVISED ONLY (upper bound, probes): a :class:`ContrastiveDataset` item plus its label."""

    def __init__(self, base: ContrastiveDataset, labels: dict[str, int]) -> None:
        self.base = base
        self.labels = [labels[i] for i in base.ids]

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[dict, int]:
        return self.base[i], self.labels[i]
