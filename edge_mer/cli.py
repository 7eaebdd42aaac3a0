"""``edge-mer``: the command-line entry point.

Every subcommand takes ``--config FILE`` (repeatable) and ``--set section.key=value``
(repeatable). Entry points are ``main(argv) -> int`` so tests call them without a subprocess.
Errors about user input print one line, ``edge-mer: error: ...``, and exit non-zero.
"""

from __future__ import annotations

import _signal  # the C module: installed before `signal` (an enum module) has even imported
import sys

_received: list[int] = []  # signals taken before main() could act on them, and by _stop_signals


def _record(signum, frame) -> None:
    _received.append(signum)


def lost_stop() -> int | None:
    """The last stop signal that :func:`main`'s start-up handler took, or None. The handler raises
    :class:`~edge_mer.errors.Interrupted`, but a signal that lands inside a weakref callback or a
    ``__del__`` (importlib's module locks) has its exception printed as "ignored" and lost; the
    command's own start-up checks here before it goes on (``edge-mer run`` when it installs its
    run-loop handlers)."""
    return _received[-1] if _received else None


def _is_program() -> bool:
    """Whether this process is ``edge-mer`` itself (the console script, ``python -m edge_mer``),
    not a program that imports the CLI (tests call main() in-process)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "edge_mer.__main__" or sys.argv[0].endswith("edge-mer")


if _is_program():
    # From the first lines the program runs: a SIGINT, SIGTERM or SIGHUP while the modules below
    # import is noted (not raised: a KeyboardInterrupt out of an import is a traceback) and
    # main() ends the run as soon as it starts. An ignored signal stays ignored (nohup).
    for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(_signal, _name) and _signal.getsignal(getattr(_signal, _name)) != _signal.SIG_IGN:
            _signal.signal(getattr(_signal, _name), _record)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable

from edge_mer import __version__  # noqa: E402
from edge_mer.errors import EdgeMerError, Interrupted, interrupt_in, stopped_message  # noqa: E402

log = logging.getLogger("edge_mer")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"


def add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", action="append", default=[], metavar="FILE",
                       help="config file (.toml/.yaml); repeatable, later files win")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config value, e.g. --set runtime.smoothing_tau_s=2.0; repeatable")
    group.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")


def _cmd_info(args: argparse.Namespace) -> int:
    from edge_mer.bundle import Bundle

    bundle = Bundle.load(args.bundle, verify_checksums=not args.no_verify)
    if args.json:
        import json

        print(json.dumps(bundle.manifest, indent=2))
    else:
        print(bundle.describe())
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from edge_mer.config import dump_toml, load_config

    print(dump_toml(load_config(args.config, args.overrides)), end="")
    return 0


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-mer",
        description="On-device multimodal emotion recognition: face, landmarks, speech and words, "
        "fused from label-free pairwise-contrastive encoders.",
        epilog="Run 'edge-mer COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"edge-mer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="show what a model bundle holds and how it was made")
    p.add_argument("bundle", nargs="?", default=str(DEFAULT_BUNDLE), help="bundle directory (default: the bundled default model)")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    add_config_args(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("config", help="print the resolved configuration (defaults + files + --set)")
    add_config_args(p)
    p.set_defaults(func=_cmd_config)

    try:
        from edge_mer.stream import app as _app  # noqa: F401  (torch-free; fills 'run')

        _app.add_run_parser(sub, add_config_args, DEFAULT_BUNDLE)
    except ImportError as exc:  # pragma: no cover - only while the runtime is being built
        log.debug("run unavailable: %s", exc)
    from edge_mer import adapt as _adapt  # numpy only: always there

    _adapt.add_adapt_parser(sub, add_config_args, DEFAULT_BUNDLE)
    from edge_mer import models as _models  # standard library only

    _models.add_models_parser(sub, add_config_args)
    try:
        from edge_mer import bench as _bench

        _bench.add_bench_parser(sub, add_config_args, DEFAULT_BUNDLE)
    except ImportError as exc:  # pragma: no cover
        log.debug("bench unavailable: %s", exc)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@contextlib.contextmanager
def _stop_signals():
    """SIGINT, SIGTERM and SIGHUP raise :class:`~edge_mer.errors.Interrupted` from the first line
    of :func:`main` on (while the parser imports the runtime, the bundle loads, ...), so a stop
    during start-up also ends with 128 + the signal's number and one line, never a traceback or a
    kill by the signal's default action. ``edge-mer run`` installs its own handlers for its run
    loop. A signal the process was started with ignored stays ignored. The previous handlers come
    back at the end (``main`` is also called in-process)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def handle(signum, frame):
            _received.append(signum)
            raise Interrupted(signum)

        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            # An ignored signal stays ignored (`nohup edge-mer run ...`, a background job's SIGINT).
            if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN:
                number = getattr(signal, name)
                previous[number] = signal.signal(number, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _stopped(exc: KeyboardInterrupt, command: str | None) -> int:
    signum = int(getattr(exc, "signum", signal.SIGINT))  # a bare KeyboardInterrupt is Python's own SIGINT
    # Before the command is known, or in `run` before its loop: the start-up.
    print(stopped_message(signum, starting=True, command=command or "run"), file=sys.stderr, flush=True)
    return 128 + signum


def _quiet_lost_stops(previous, unraisable) -> None:
    """``sys.unraisablehook`` while :func:`main` runs (bound to the hook it replaced,
    ``previous``): a stop signal's :class:`~edge_mer.errors.Interrupted` lost in a weakref
    callback or ``__del__`` is not printed (the stop is acted on through :func:`lost_stop` and the
    run's own check); anything else goes to ``previous``."""
    if isinstance(unraisable.exc_value, Interrupted):
        return
    previous(unraisable)


def main(argv: list[str] | None = None) -> int:
    previous = sys.unraisablehook
    sys.unraisablehook = functools.partial(_quiet_lost_stops, previous)
    try:
        return _main(argv)
    finally:
        sys.unraisablehook = previous
        _received.clear()  # acted on: a later in-process command starts clean


def _main(argv: list[str] | None) -> int:
    command = None
    pending, _received[:] = list(_received), []
    with _stop_signals():
        try:
            if pending:  # a signal while the program was importing this module
                raise Interrupted(pending[0])
            parser = build_parser()
            args = parser.parse_args(argv)
            command = getattr(args, "command", None)
            if not getattr(args, "func", None):
                parser.print_help()
                return 0
            _setup_logging(getattr(args, "verbose", 0))
            return int(args.func(args) or 0)
        except EdgeMerError as exc:
            print(f"edge-mer: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt as exc:
            # Ctrl-C, or errors.Interrupted: 128 + the signal's number. `run` prints its own line
            # once its outputs are open; a signal before that (or in another command) ends here.
            return _stopped(exc, command)
        except BrokenPipeError:
            # The reader of our stdout went away (e.g. `edge-mer run | head`): stop quietly.
            try:
                sys.stdout = None  # type: ignore[assignment]
            finally:
                return 0
        except Exception as exc:
            # A signal raised inside a library's import or initialisation comes back as its own
            # error (ImportError: initialization failed): still a stop, not a crash.
            interrupt = interrupt_in(exc)
            if interrupt is None and _received:
                interrupt = Interrupted(_received[-1])
            if interrupt is None:
                raise
            return _stopped(interrupt, command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
