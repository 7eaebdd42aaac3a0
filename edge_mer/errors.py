"""User-facing errors.

An :class:`EdgeMerError` carries one line that names the input and says what is wrong. The CLI
prints it as ``edge-mer: error: <line>`` and exits with its ``exit_code``; no traceback.
"""

from __future__ import annotations


class EdgeMerError(Exception):
    """A clear, one-line error about user input (a file, a flag, a device).

    >>> raise EdgeMerError("clip.mp4: no audio track")
    Traceback (most recent call last):
    ...
    edge_mer.errors.EdgeMerError: clip.mp4: no audio track
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        # Keep it to one line whatever the caller passed in.
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(EdgeMerError):
    """A configuration file or ``--set`` override is wrong."""


class BundleError(EdgeMerError):
    """A model bundle is missing, incomplete, tampered with or of an unknown schema."""


class MediaError(EdgeMerError):
    """A media file or capture device cannot be read."""

    exit_code = 3


class DeviceError(EdgeMerError):
    """A camera, microphone, GPU or TensorRT is absent or failed."""

    exit_code = 4


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP ended the run; the process exits 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum


def interrupt_in(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (a signal's :class:`Interrupted`) behind ``exc``, if any: a signal
    that lands while a library imports or initialises (onnxruntime's pybind11 module) comes back
    as that library's own error, ``ImportError: initialization failed``, caused by it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def stopped_message(signum: int, events: int = 0, starting: bool = False, command: str = "run") -> str:
    """The one line on stderr of a process ended by a signal.

    >>> stopped_message(15, starting=True)
    'edge-mer: stopped by SIGTERM during start-up, before the first event (exit 143)'
    >>> stopped_message(2, events=3)
    'edge-mer: stopped by SIGINT after 3 events (exit 130)'
    """
    import signal

    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if command != "run":
        what = ""
    elif starting:
        what = " during start-up, before the first event"
    elif not events:
        what = " before the first event"
    else:
        what = f" after {events} event{'s' if events != 1 else ''}"
    return f"edge-mer: stopped by {name}{what} (exit {128 + signum})"
