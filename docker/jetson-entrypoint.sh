#!/usr/bin/env bash
# Entrypoint of docker/Dockerfile.jetson: build the bundle's TensorRT engines for this device once
# (into the /engines volume), then run edge-mer with that bundle.
#   EDGE_MER_ENGINES        where the engine bundle lives (default /engines), or "off": no engines,
#                           the shipped bundle on ONNX Runtime
#   EDGE_MER_TRT_PRECISION  fp16 (default), int8 (Orin; uses the bundle's calibration inputs), best
#   EDGE_MER_SOURCE_BUNDLE  the bundle to build engines for (default /app/models/default, the one
#                           in the image; e.g. -v ~/my_bundle:/bundle:ro -e EDGE_MER_SOURCE_BUNDLE=/bundle)
# The engines are rebuilt only when the TensorRT version, the board or the shipped bundle changes.
set -euo pipefail
src="${EDGE_MER_SOURCE_BUNDLE:-/app/models/default}"
engines="${EDGE_MER_ENGINES:-/engines}"
precision="${EDGE_MER_TRT_PRECISION:-fp16}"

if [ "$engines" = off ]; then
  bundle="$src"
  config=()
else
  bundle="$engines/default"
  config=(--config /etc/edge-mer/jetson.toml)
  stamp="$engines/default.built-for"
  board="$({ tr -d '\0' </proc/device-tree/model; } 2>/dev/null || echo unknown)"
  trt="$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || echo none)"
  want="tensorrt=$trt board=$board precision=$precision bundle=$(sha256sum "$src/manifest.json" | cut -d' ' -f1)"
  if [ ! -f "$bundle/manifest.json" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "edge-mer: building TensorRT engines ($precision) for $board into $bundle; once per device, a few minutes" >&2
    python3 /app/export/build_engines.py --bundle "$src" --out "$bundle" --precision "$precision" || {
      rc=$?
      echo "edge-mer: building the engines failed (exit $rc); EDGE_MER_ENGINES=off runs the bundle without them" >&2
      exit "$rc"
    }
    printf '%s\n' "$want" >"$stamp"
  fi
fi

# The bundle (and the Jetson config) go first, so the user's own options still override them.
case "${1:-}" in
  run|bench) sub="$1"; shift; set -- "$sub" --bundle "$bundle" "${config[@]}" "$@" ;;
  info) [ "$#" -eq 1 ] && set -- info "$bundle" ;;
  build-engines) exit 0 ;;   # only build (e.g. ExecStartPre of a service); done above
esac
exec edge-mer "$@"
