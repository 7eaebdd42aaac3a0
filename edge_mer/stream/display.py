"""``--display``: an OpenCV window with the face box, landmarks, probability bars and latency.

The window is refreshed with the video (every analysed frame), not only when an event comes: the
latest event's bars stay on screen over the newest frame. Below the fused bars, one line per
modality says what that modality alone reads (its top label and probability) and its
reliability in the window, and which modalities are absent and why.

Needs a GUI OpenCV (``opencv-python``) and a display. The headless wheel used on servers and in
CI raises ``cv2.error`` from any window call; that becomes a one-line DeviceError at start-up.

>>> view = Display("edge-mer")                     # doctest: +SKIP
>>> view.show(frame_bgr, event, box, landmarks)    # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys

import numpy as np

from edge_mer.errors import DeviceError

_GREEN = (80, 200, 80)
_WHITE = (255, 255, 255)
_BAR_W = 160


class Display:
    """An OpenCV window; ``show`` draws one frame with the latest event, ``closed`` tells
    whether the user pressed q or Esc."""

    def __init__(self, title: str = "edge-mer") -> None:
        import cv2

        self.title = title
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            # A GUI OpenCV without a display aborts the whole process in imshow: refuse first.
            raise DeviceError("--display: no display (DISPLAY is not set); run it in a desktop session or drop --display")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
            # Show something at once: a window that has been shown keeps working once PyAV is
            # imported (the run opens the display before any decoding).
            cv2.imshow(title, np.zeros((360, 480, 3), np.uint8))
            cv2.waitKey(1)
        except cv2.error:
            raise DeviceError(
                "--display: this OpenCV has no GUI (opencv-python-headless) or there is no display; "
                "install opencv-python on a machine with a screen, or drop --display"
            ) from None
        self.closed = False

    def show(self, bgr: np.ndarray | None, event: dict | None, box: np.ndarray | None,
             landmarks: np.ndarray | None) -> None:
        import cv2

        cv2.imshow(self.title, render(bgr, event, box, landmarks))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.closed = True

    def close(self) -> None:
        import cv2

        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass  # the window is already gone (closed by the user)


def render(bgr: np.ndarray | None, event: dict | None, box: np.ndarray | None,
           landmarks: np.ndarray | None) -> np.ndarray:
    """The picture ``--display`` shows: the frame (or black) with the face box, the landmarks,
    one bar per label and a status line (label, modalities, latency)."""
    import cv2

    canvas = bgr.copy() if bgr is not None else np.zeros((360, 480, 3), np.uint8)
    if box is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), _GREEN, 2)
    if landmarks is not None:
        for x, y in landmarks.astype(int):
            cv2.circle(canvas, (int(x), int(y)), 1, _GREEN, -1)
    if event is not None and event.get("probs"):
        for i, (label, p) in enumerate(event["probs"].items()):
            y = 20 + 18 * i
            cv2.rectangle(canvas, (10, y - 11), (10 + int(_BAR_W * p), y + 3), _GREEN, -1)
            cv2.putText(canvas, f"{label} {p:.2f}", (14 + _BAR_W, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _WHITE, 1)
        y0 = 20 + 18 * len(event["probs"]) + 8
        for j, line in enumerate(modality_lines(event)):
            cv2.putText(canvas, line, (10, y0 + 16 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.42, _WHITE, 1)
    if event is not None:
        status = f"{event['label'] or '-'}  {'+'.join(event['modalities']) or 'no modality'}"
        if event.get("latency_ms") is not None:
            status += f"  latency {event['latency_ms']:.0f} ms"
        cv2.putText(canvas, status, (10, canvas.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6, _WHITE, 2)
    return canvas


def modality_lines(event: dict) -> list[str]:
    """One readable line per modality: what it alone reads and how much it counted, or why it is
    absent.

    >>> modality_lines({"per_modality": {"face": {"happy": 0.7, "sad": 0.3}}, "reliability": {"face": 0.9},
    ...                 "absent": {"audio": "no speech"}})
    ['face: happy 0.70 (reliability 0.90)', 'audio: no speech']
    """
    lines = []
    for m, probs in event.get("per_modality", {}).items():
        top = max(probs, key=probs.get)
        r = event.get("reliability", {}).get(m)
        lines.append(f"{m}: {top} {probs[top]:.2f}" + (f" (reliability {r:.2f})" if r is not None else ""))
    lines += [f"{m}: {why}" for m, why in event.get("absent", {}).items()]
    return lines
