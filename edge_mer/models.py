"""``edge-mer models``: fetch and verify the speech-to-text models that edge-mer does not ship.

``edge-mer models fetch vosk-en`` downloads the English (US) small Vosk model named in the Vosk
project's published model list (https://alphacephei.com/vosk/models/model-list.json, the list the
``vosk`` package's own downloader reads), checks its size and the list's md5, records the sha256
of what arrived, and unpacks it into ``<data dir>/vosk/<model name>`` (a temporary directory
beside it, renamed into place: a failed fetch leaves nothing behind). ``edge-mer run`` with
``text.asr = "vosk"`` and no ``--vosk-model`` uses that model (:func:`installed_vosk_model`).
Nothing else in edge-mer downloads anything, and this command only runs when asked.

``<data dir>`` is ``$EDGE_MER_DATA``, else ``$XDG_DATA_HOME/edge-mer``, else
``~/.local/share/edge-mer`` (:func:`data_dir`).

>>> data_dir({"EDGE_MER_DATA": "/srv/edge-mer"})
PosixPath('/srv/edge-mer')
>>> data_dir({"XDG_DATA_HOME": "/home/ana/.data", "HOME": "/home/ana"})
PosixPath('/home/ana/.data/edge-mer')
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import http.client
import json
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Mapping

from edge_mer.errors import EdgeMerError
from edge_mer.io import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)

MODEL_LIST_URL = "https://alphacephei.com/vosk/models/model-list.json"  # as vosk.MODEL_LIST_URL
MODELS_PAGE = "https://alphacephei.com/vosk/models"
TIMEOUT_S = 20.0
INSTALLED = "installed.json"


class FetchError(EdgeMerError):
    """A model could not be fetched, verified or installed (network, checksum, archive, disk)."""

    exit_code = 5


@dataclass(frozen=True)
class Known:
    """A model ``edge-mer models fetch`` knows by a short name."""

    key: str
    lang: str  # the list's "lang"
    kind: str  # the list's "type"
    preferred: str  # the list entry to take; else the newest non-obsolete one of lang and kind
    about: str


KNOWN = {
    "vosk-en": Known("vosk-en", "en-us", "small", "vosk-model-small-en-us-0.15",
                     "Vosk English (US) small model, about 40 MB, for `edge-mer run` words (text.asr = \"vosk\")"),
}


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where edge-mer keeps what it fetches: ``$EDGE_MER_DATA``, else ``$XDG_DATA_HOME/edge-mer``,
    else ``~/.local/share/edge-mer``."""
    env = os.environ if env is None else env
    if env.get("EDGE_MER_DATA"):
        return Path(env["EDGE_MER_DATA"]).expanduser()
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]).expanduser() / "edge-mer"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "share" / "edge-mer"


def vosk_dir(env: Mapping[str, str] | None = None) -> Path:
    return data_dir(env) / "vosk"


def _is_model_dir(path: Path) -> bool:
    from edge_mer.backends.vosk_asr import is_model_dir  # numpy only; vosk is not imported

    return is_model_dir(path)


def read_installed(root: Path) -> dict:
    """``<data dir>/vosk/installed.json``: what ``fetch`` installed, by short name ({} if none)."""
    try:
        data = json.loads((root / INSTALLED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def installed_vosk_model(env: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    """The Vosk model ``edge-mer run`` uses when none is given: the one ``installed.json`` names
    (``vosk-en`` first), else the only model directory in ``<data dir>/vosk``. Returns (the
    directory, how it was chosen) or (None, why there is none)."""
    root = vosk_dir(env)
    if not root.is_dir():
        return None, f"none installed in {root}"
    installed = read_installed(root)
    for key in [*(k for k in KNOWN if k in installed), *(k for k in installed if k not in KNOWN)]:
        entry = installed[key]
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name and _is_model_dir(root / name):
            return root / name, f"{key} in {root / INSTALLED}"
    found = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and _is_model_dir(p))
    if len(found) == 1:
        return found[0], f"the only model directory in {root}"
    if found:
        return None, (f"{len(found)} model directories in {root} and none named in {INSTALLED} "
                      f"({', '.join(p.name for p in found)}): pass --vosk-model DIR")
    return None, f"none installed in {root}"


def _manual(known: Known, root: Path) -> str:
    return (f"download {known.preferred}.zip by hand from {MODELS_PAGE} and run 'edge-mer models fetch "
            f"{known.key} --from-zip FILE' (or unpack it into {root}/ or pass --vosk-model DIR), "
            "or use --asr whisper (English, no download)")


def _reason(exc: BaseException, timeout_s: float) -> str:
    """A network error in a few words: ``Name or service not known``, ``HTTP 404 Not Found``."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, TimeoutError):  # socket.timeout too
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _retrying(action: Callable[[], object], timeout_s: float, attempts: int = 2):
    """``action()``, once more after a second on a network error (not on an HTTP 4xx)."""
    for attempt in range(attempts):
        try:
            return action()
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts - 1:
                raise
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            if attempt == attempts - 1:
                raise
        log.info("retrying in 1 s")
        time.sleep(1.0)
    raise AssertionError("unreachable")  # pragma: no cover


def _open(url: str, timeout_s: float):
    from edge_mer import __version__

    return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": f"edge-mer/{__version__}"}),
                                  timeout=timeout_s)


def fetch_model_list(url: str = MODEL_LIST_URL, timeout_s: float = TIMEOUT_S) -> list[dict]:
    """The published model list (raises the network error; a malformed list is a FetchError)."""
    def get() -> bytes:
        with _open(url, timeout_s) as resp:
            return resp.read()

    body = _retrying(get, timeout_s)
    try:
        models = json.loads(body)
    except ValueError:
        raise FetchError(f"{url}: not a JSON model list") from None
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise FetchError(f"{url}: not a model list (expected a JSON list of models)")
    return models


def _version(entry: dict) -> tuple:
    parts = []
    for piece in str(entry.get("version", "")).replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


def choose(models: list[dict], known: Known, url: str = MODEL_LIST_URL) -> dict:
    """The list entry for ``known``: its preferred name, else the newest non-obsolete model of its
    language and type. It must carry a zip url and an md5."""
    entry = next((m for m in models if m.get("name") == known.preferred), None)
    if entry is None:
        fits = [m for m in models if m.get("lang") == known.lang and m.get("type") == known.kind
                and str(m.get("obsolete", "false")).lower() != "true"]
        if not fits:
            raise FetchError(f"{url}: lists no {known.kind} {known.lang} model")
        entry = max(fits, key=_version)
    for field in ("name", "url", "md5"):
        if not isinstance(entry.get(field), str) or not entry[field]:
            raise FetchError(f"{url}: the entry for {entry.get('name', known.preferred)} has no {field}")
    name = entry["name"]
    if "/" in name or "\\" in name or name.startswith("."):
        raise FetchError(f"{url}: model name {name!r} is not a plain directory name")
    return entry


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """One fetch at a time per data directory (a lock on the directory itself: no lock file)."""
    import fcntl

    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FetchError(f"{root}: another 'edge-mer models fetch' is running there") from None
        yield
    finally:
        os.close(fd)


def _progress(done: int, total: int | None, last: list[float]) -> None:
    if not sys.stderr.isatty():
        return
    now = time.monotonic()
    if now - last[0] < 0.25 and (total is None or done < total):
        return
    last[0] = now
    of = f" / {total / 1e6:.1f}" if total else ""
    print(f"\r  {done / 1e6:.1f}{of} MB", end="", file=sys.stderr, flush=True)


def download(url: str, dest: Path, size: int | None, timeout_s: float = TIMEOUT_S) -> tuple[str, str, int]:
    """Stream ``url`` into ``dest`` (retried once from the start on a network error); returns
    (md5, sha256, bytes). On any failure ``dest`` is removed."""
    def get() -> tuple[str, str, int]:
        md5, sha = hashlib.md5(), hashlib.sha256()
        n, last = 0, [0.0]
        with _open(url, timeout_s) as resp, open(dest, "wb") as out:
            total = size or int(resp.headers.get("Content-Length") or 0) or None
            while True:
                block = resp.read(1 << 16)
                if not block:
                    break
                out.write(block)
                md5.update(block)
                sha.update(block)
                n += len(block)
                _progress(n, total, last)
        if last[0]:
            print(file=sys.stderr)
        return md5.hexdigest(), sha.hexdigest(), n

    try:
        return _retrying(get, timeout_s)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise


def _hashes(path: Path) -> tuple[str, str, int]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            md5.update(block)
            sha.update(block)
            n += len(block)
    return md5.hexdigest(), sha.hexdigest(), n


def _members(archive: zipfile.ZipFile, source: str) -> tuple[str | None, list[zipfile.ZipInfo]]:
    """The archive's files, checked to stay inside the target, and its single top-level
    directory (stripped when unpacking), if it has one."""
    infos = archive.infolist()
    if not infos:
        raise FetchError(f"{source}: empty zip archive")
    tops = set()
    for info in infos:
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if not parts or info.filename.startswith("/") or ".." in parts or ":" in parts[0]:
            raise FetchError(f"{source}: unsafe path {info.filename!r} in the archive")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise FetchError(f"{source}: the archive holds a symbolic link ({info.filename}); refusing it")
        tops.add(parts[0])
    top = next(iter(tops)) if len(tops) == 1 and any(len(PurePosixPath(i.filename).parts) > 1 for i in infos) else None
    return top, infos


def zip_model_name(zip_path: Path) -> str:
    """The model's name: the archive's top-level directory, else the file's name without .zip."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            top, _ = _members(archive, str(zip_path))
    except zipfile.BadZipFile:
        raise FetchError(f"{zip_path}: not a zip archive") from None
    return top or (zip_path.name[:-4] if zip_path.name.endswith(".zip") else zip_path.stem)


def unpack(zip_path: Path, target: Path, source: str | None = None) -> Path:
    """Unpack a Vosk model zip into ``target`` (through a temporary directory beside it, renamed
    into place; an existing ``target`` is replaced only once the new one is complete)."""
    source = source or str(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive, atomic_dir(target, overwrite=True) as tmp:
            top, infos = _members(archive, source)
            for info in infos:
                rel = PurePosixPath(info.filename.replace("\\", "/"))
                if top is not None:
                    rel = PurePosixPath(*rel.parts[1:])
                if not rel.parts:
                    continue
                out = tmp.joinpath(*rel.parts)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            if not _is_model_dir(tmp):
                raise FetchError(f"{source}: not a Vosk model (expected am/ and conf/ inside)")
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{source}: not a zip archive ({exc})") from None
    except OSError as exc:
        raise FetchError(f"{target}: cannot unpack the model there ({exc.strerror or exc})") from None
    return target


def _record(root: Path, key: str, record: dict) -> None:
    installed = read_installed(root)
    installed[key] = record
    atomic_write_text(root / INSTALLED, json.dumps(installed, indent=2, sort_keys=True) + "\n")


def _check_space(root: Path, size: int | None) -> None:
    if not size:
        return
    free = shutil.disk_usage(root).free
    if free < 3 * size:  # the zip, the unpacked model (a little larger), some headroom
        raise FetchError(f"{root}: {free / 1e6:.0f} MB free, the model needs about {3 * size / 1e6:.0f} MB "
                         "while it is fetched and unpacked")


def fetch(key: str, *, list_url: str = MODEL_LIST_URL, timeout_s: float = TIMEOUT_S, force: bool = False,
          from_zip: str | None = None, md5: str | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Fetch (or, with ``from_zip``, install from a zip) the model ``key``; returns its directory."""
    if key not in KNOWN:
        raise EdgeMerError(f"models fetch {key}: unknown model (known: {', '.join(KNOWN)})")
    known = KNOWN[key]
    root = vosk_dir(env)
    md5 = md5.strip().lower() if md5 else None
    if md5 is not None and (len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5)):
        raise EdgeMerError(f"--md5 {md5}: expected 32 hexadecimal digits")
    if from_zip is not None:
        with _data_root(root):
            return _install_zip(known, Path(from_zip).expanduser(), root, list_url, timeout_s, md5)
    # The list first: offline, nothing is created on disk.
    try:
        entry = choose(fetch_model_list(list_url, timeout_s), known, list_url)
    except FetchError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise FetchError(f"cannot fetch the Vosk model list {list_url} ({_reason(exc, timeout_s)}); "
                         f"{_manual(known, root)}") from None
    name, url = entry["name"], entry["url"]
    target = root / name
    with _data_root(root):
        recorded = read_installed(root).get(key, {})
        if not force and _is_model_dir(target) and recorded.get("name") == name and recorded.get("md5") == entry["md5"]:
            print(f"edge-mer: {name} is already installed in {target} (md5 {entry['md5']}); --force fetches it again",
                  file=sys.stderr)
            return target
        size = entry.get("size") if isinstance(entry.get("size"), int) else None
        _check_space(root, size)
        partial = root / f"{name}.zip.partial"
        print(f"edge-mer: fetching {url}" + (f" ({size / 1e6:.1f} MB)" if size else ""), file=sys.stderr, flush=True)
        try:
            got_md5, got_sha, n = download(url, partial, size, timeout_s)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise FetchError(f"cannot download {url} ({_reason(exc, timeout_s)}); {_manual(known, root)}") from None
        try:
            if size is not None and n != size:
                raise FetchError(f"{url}: downloaded {n} bytes, the model list says {size}; nothing installed (try again)")
            if got_md5 != entry["md5"].lower():
                raise FetchError(f"{url}: md5 {got_md5} does not match the published {entry['md5']}; nothing installed")
            unpack(partial, target, url)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        _record(root, key, {"name": name, "url": url, "md5": got_md5, "sha256": got_sha, "size": n,
                            "verified": f"md5 published in {list_url}", "installed": _now()})
        print(f"edge-mer: installed {name} in {target} (md5 {got_md5} as published; sha256 {got_sha})")
        return target


@contextlib.contextmanager
def _data_root(root: Path) -> Iterator[None]:
    """``root`` created and locked for this fetch."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"{root}: cannot create the data directory ({exc.strerror or exc}); "
                         "set EDGE_MER_DATA to a writable one") from None
    with _lock(root):
        yield


def _install_zip(known: Known, zip_path: Path, root: Path, list_url: str, timeout_s: float,
                 md5: str | None) -> Path:
    if not zip_path.is_file():
        raise EdgeMerError(f"--from-zip {zip_path}: file not found")
    name = zip_model_name(zip_path)
    if "/" in name or name.startswith("."):
        raise FetchError(f"{zip_path}: model name {name!r} is not a plain directory name")
    got_md5, got_sha, n = _hashes(zip_path)
    published, why_not = None, ""
    try:
        models = fetch_model_list(list_url, timeout_s)
        entry = next((m for m in models if m.get("name") == name), None)
        if entry is None:
            why_not = f"{name} is not in {list_url}"
        else:
            published = str(entry.get("md5") or "").lower() or None
    except FetchError as exc:
        why_not = str(exc)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        why_not = f"cannot fetch {list_url} ({_reason(exc, timeout_s)})"
    for expected, what in ((published, f"the md5 published in {list_url}"), (md5, "--md5")):
        if expected is not None and got_md5 != expected:
            raise FetchError(f"{zip_path}: md5 {got_md5} does not match {what} ({expected}); nothing installed")
    if published is not None:
        verified = f"md5 published in {list_url}"
    elif md5 is not None:
        verified = "--md5"
    else:
        verified = "unverified"
        print(f"edge-mer: warning: {zip_path} is unverified ({why_not}; no --md5 given): md5 {got_md5}",
              file=sys.stderr)
    target = unpack(zip_path, root / name)
    _record(root, known.key, {"name": name, "url": zip_path.resolve().as_uri(), "md5": got_md5, "sha256": got_sha,
                              "size": n, "verified": verified, "installed": _now()})
    print(f"edge-mer: installed {name} in {target} (md5 {got_md5}, {verified}; sha256 {got_sha})")
    return target


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _cmd_fetch(args: argparse.Namespace) -> int:
    if args.md5 and not args.from_zip:
        raise EdgeMerError("--md5 checks a zip given with --from-zip; a fetch checks the published md5 itself")
    if not args.timeout > 0:
        raise EdgeMerError(f"--timeout {args.timeout:g}: must be positive")
    fetch(args.name, list_url=args.list_url, timeout_s=args.timeout, force=args.force, from_zip=args.from_zip,
          md5=args.md5)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    root = vosk_dir()
    installed = read_installed(root)
    chosen, how = installed_vosk_model()
    print(f"data directory: {data_dir()}")
    for key, known in KNOWN.items():
        entry = installed.get(key) if isinstance(installed.get(key), dict) else None
        if entry and _is_model_dir(root / str(entry.get("name", ""))):
            state = f"installed: {root / entry['name']} ({entry.get('verified', '?')})"
        else:
            state = f"not installed (edge-mer models fetch {key})"
        print(f"{key:10s} {known.about}; {state}")
    if chosen is not None:
        print(f"edge-mer run uses {chosen} when text.asr = \"vosk\" and no --vosk-model is given ({how})")
    else:
        print(f"edge-mer run has no Vosk model without --vosk-model ({how})")
    return 0


def add_models_parser(sub, add_config_args) -> None:
    p = sub.add_parser("models", help="fetch and list the speech-to-text models edge-mer does not ship",
                       description="Models kept in the data directory ($EDGE_MER_DATA, else $XDG_DATA_HOME/edge-mer, "
                       "else ~/.local/share/edge-mer). `edge-mer run` uses an installed Vosk model when "
                       "no --vosk-model is given.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    f = msub.add_parser("fetch", help="download, verify and install a model",
                        description="Download a model from the Vosk project's published list, verify its size "
                        "and md5, and unpack it into the data directory. Nothing is left behind on failure.")
    f.add_argument("name", choices=sorted(KNOWN), help="the model: " + "; ".join(f"{k}: {v.about}" for k, v in KNOWN.items()))
    f.add_argument("--from-zip", metavar="FILE", help="install from a zip downloaded by hand (verified against the "
                   "published md5 when the list is reachable, else against --md5, else installed with a warning)")
    f.add_argument("--md5", metavar="HEX", help="the md5 the zip must have (with --from-zip)")
    f.add_argument("--force", action="store_true", help="fetch again even if the model is installed")
    f.add_argument("--timeout", type=float, default=TIMEOUT_S, metavar="S",
                   help=f"network timeout in seconds (default {TIMEOUT_S:g}; one retry)")
    f.add_argument("--list-url", default=MODEL_LIST_URL, metavar="URL",
                   help="the model list (default: the Vosk project's; a mirror in the same format)")
    add_config_args(f)
    f.set_defaults(func=_cmd_fetch)
    ls = msub.add_parser("list", help="the models fetch knows and what is installed")
    add_config_args(ls)
    ls.set_defaults(func=_cmd_list)
