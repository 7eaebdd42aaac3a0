"""Benchmark the torch-free MTCNN (numpy cascade over ONNX Runtime) against facenet-pytorch on
real frames: agreement (worst box / landmark deviation in pixels) and median latency per frame,
both on one CPU thread, after a warm-up frame. Prints a Markdown table.

    python export/bench_mtcnn.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edge_mer.config import FaceCfg, RuntimeCfg
from export.bundle_builder import REPO_ROOT


def _frames(data: Path) -> dict[str, list[np.ndarray]]:
    import cv2

    from edge_mer.media import iter_video_frames

    stills = [cv2.imread(str(p)) for p in sorted((data / "ravdess" / "face_stills").glob("*.png"))]
    video = []
    for clip in sorted((data / "ravdess" / "video_actor01").glob("*.mp4"))[:3]:
        video.extend(f for _, (_, f) in zip(range(3), iter_video_frames(clip, fps=1.0)))
    return {f"RAVDESS stills {stills[0].shape[1]}x{stills[0].shape[0]}": stills,
            f"RAVDESS video frames {video[0].shape[1]}x{video[0].shape[0]}": video}


def _timed(fn, frames):
    fn(frames[0])
    times, outs = [], []
    for f in frames:
        t0 = time.perf_counter()
        outs.append(fn(f))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), outs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_mtcnn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"), help="folder holding ravdess/")
    args = parser.parse_args(argv)
    import torch
    from facenet_pytorch import MTCNN as TorchMTCNN

    from edge_mer.backends.onnx_backend import OnnxModel
    from edge_mer.face.mtcnn import MTCNN
    from export.mtcnn_export import export_mtcnn

    torch.set_num_threads(1)
    cfg = FaceCfg(min_face_fraction=0.0)  # facenet-pytorch has only the absolute minimum
    with tempfile.TemporaryDirectory() as tmp:
        nets = export_mtcnn(tmp)
        ours = MTCNN(*(OnnxModel.from_file(nets[n][0], RuntimeCfg(threads=1)) for n in ("pnet", "rnet", "onet")), cfg)
        ref = TorchMTCNN(min_face_size=cfg.min_face_size_px, thresholds=list(cfg.thresholds), factor=cfg.scale_factor,
                         select_largest=True, device="cpu")
        print("| frames | n | faces found (ours / facenet-pytorch) | worst box dev. (px) | worst landmark dev. (px) "
              "| ms/frame ours (ORT+numpy) | ms/frame facenet-pytorch |")
        print("|---|---|---|---|---|---|---|")
        for name, frames in _frames(Path(args.data)).items():
            t_ours, out_ours = _timed(ours.detect, frames)
            t_ref, out_ref = _timed(lambda f: ref.detect(np.ascontiguousarray(f[:, :, ::-1]), landmarks=True), frames)
            n_ours = sum(len(o[0]) for o in out_ours)
            n_ref = sum(0 if r[0] is None else len(r[0]) for r in out_ref)
            box_dev = max((np.abs(o[0] - r[0]).max() for o, r in zip(out_ours, out_ref) if r[0] is not None
                           and len(r[0]) == len(o[0])), default=float("nan"))
            pt_dev = max((np.abs(o[2] - r[2]).max() for o, r in zip(out_ours, out_ref) if r[0] is not None
                          and len(r[0]) == len(o[0])), default=float("nan"))
            print(f"| {name} | {len(frames)} | {n_ours} / {n_ref} | {box_dev:.4f} | {pt_dev:.4f} | {t_ours:.1f} | {t_ref:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
