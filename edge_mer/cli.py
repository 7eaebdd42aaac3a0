"""``edge-mer``: the command-line entry point.

Every subcommand takes ``--config FILE`` (repeatable) and ``--set section.key=value``
(repeatable). Entry points are ``main(argv) -> int`` so tests call them without a subprocess.
Errors about user input print one line, ``edge-mer: error: ...``, and exit non-zero.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from edge_mer import __version__
from edge_mer.errors import EdgeMerError

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
    try:
        from edge_mer import bench as _bench

        _bench.add_bench_parser(sub, add_config_args, DEFAULT_BUNDLE)
    except ImportError as exc:  # pragma: no cover
        log.debug("bench unavailable: %s", exc)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _setup_logging(getattr(args, "verbose", 0))
    try:
        return int(args.func(args) or 0)
    except EdgeMerError as exc:
        print(f"edge-mer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or errors.Interrupted: 128 + the signal's number
        return getattr(exc, "exit_code", 130)
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `edge-mer run | head`): stop quietly.
        try:
            sys.stdout = None  # type: ignore[assignment]
        finally:
            return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
