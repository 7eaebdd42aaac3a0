"""scripts/setup.sh: valid bash, and its apt steps wait (bounded) for a held package lock instead
of failing with apt's raw lock message and exit 100.

The behaviour tests run a copy of the script in a temporary folder with stand-ins for ``apt-get``,
``dpkg-query`` and ``id`` first on PATH (so every system package reads as missing and the caller
as root) and ``PYTHON=false`` (so the script stops at the Python check, right after the apt
steps: nothing is installed, no venv is made). The stand-in ``apt-get`` prints apt 2.6's own lock
messages, word for word.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup.sh"

LISTS_LOCK = ("E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)\n"
              "E: Unable to lock directory /var/lib/apt/lists/")
FRONTEND_LOCK = "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?"


def _exe(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _run(tmp_path: Path, apt_body: str, wait_s: str = "30", poll_s: str = "0.1") -> subprocess.CompletedProcess:
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    shutil.copy(SETUP, tmp_path / "repo" / "scripts" / "setup.sh")
    fake = tmp_path / "bin"
    fake.mkdir()
    _exe(fake / "dpkg-query", "exit 1\n")                       # nothing installed
    _exe(fake / "id", 'if [ "${1:-}" = -u ]; then echo 0; else /usr/bin/id "$@"; fi\n')
    _exe(fake / "apt-get", f'echo "$*" >> "{tmp_path}/calls"\n' + apt_body)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": "false", "TMPDIR": str(tmp_path),
           "EDGE_MER_APT_LOCK_WAIT": wait_s, "EDGE_MER_APT_LOCK_POLL": poll_s, "STATE": str(tmp_path / "n")}
    return subprocess.run(["bash", str(tmp_path / "repo" / "scripts" / "setup.sh"), "all"], env=env,
                          capture_output=True, text=True, timeout=60)


def _calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


def test_bash_syntax():
    assert subprocess.run(["bash", "-n", str(SETUP)], capture_output=True).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (Debian: shellcheck)")
def test_shellcheck_clean():
    r = subprocess.run(["shellcheck", str(SETUP)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_every_apt_call_goes_through_the_lock_wait():
    text = SETUP.read_text()
    assert 'EDGE_MER_APT_LOCK_WAIT:-300' in text                  # ~5 min by default
    apt_lines = [ln.strip() for ln in text.splitlines()
                 if re.search(r"apt-get( -o \S+)* (update|install)\b", ln) and not re.match(r"\s*(#|echo)", ln)]
    assert len(apt_lines) == 2 and all(ln.startswith("apt_step ") for ln in apt_lines), apt_lines
    # the full set also brings the MQTT broker and the headless browser, and the sinks extra
    assert "mosquitto chromium chromium-driver" in text and "sinks" in text


def test_waits_for_a_held_lock_then_installs(tmp_path):
    # the lists lock is held for the first two tries of apt-get update, the frontend lock for the
    # first try of apt-get install; then both succeed
    body = f'''n=$(cat "$STATE" 2>/dev/null || echo 0); echo $((n + 1)) > "$STATE"
case "$*" in
  *update*) if [ "$n" -lt 2 ]; then printf '%s\\n' "{LISTS_LOCK}" >&2; exit 100; fi ;;
  *install*) if [ ! -e "$STATE.i" ]; then touch "$STATE.i"; echo "{FRONTEND_LOCK}" >&2; exit 100; fi ;;
esac
exit 0
'''
    r = _run(tmp_path, body)
    calls = _calls(tmp_path)
    assert ["update" if "update" in c.split() else "install" for c in calls] == ["update"] * 3 + ["install"] * 2
    assert "mosquitto" in calls[-1] and "chromium-driver" in calls[-1]
    assert "E: " not in r.stderr and "apt-get update failed" not in r.stderr
    waits = [ln for ln in r.stderr.splitlines() if "waiting for another apt/dpkg process" in ln]
    assert len(waits) == 2, r.stderr                               # once per apt step, not per try
    assert "held by process 4242 (apt-get)" in waits[0] and "up to 30s" in waits[0]
    # it went on past apt: the stand-in Python stops it at the version check
    assert r.returncode == 1 and "needs Python 3.10 or newer" in r.stderr


def test_gives_up_after_the_bound_with_one_line(tmp_path):
    r = _run(tmp_path, f'printf "%s\\n" "{LISTS_LOCK}" >&2; exit 100\n', wait_s="1", poll_s="0.2")
    assert r.returncode == 1, (r.returncode, r.stderr)              # not apt's 100
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("setup: gave up after 1s: another apt/dpkg process (held by process 4242 (apt-get)) "
                                "still holds the package lock; rerun scripts/setup.sh"), lines
    assert "E: " not in r.stderr and "Could not get lock" not in r.stderr
    assert len(_calls(tmp_path)) >= 2                               # it did retry


def test_other_apt_failure_shows_the_end_of_its_output(tmp_path):
    r = _run(tmp_path, 'case "$*" in *install*) echo "E: Unable to locate package chromium-driver" >&2; exit 100 ;; esac\n')
    assert r.returncode == 1
    assert "setup: apt-get install failed (exit 100)" in r.stderr
    assert "  | E: Unable to locate package chromium-driver" in r.stderr
    assert "waiting for another" not in r.stderr
    assert len(_calls(tmp_path)) == 2                               # no retry for a non-lock error
